"""Autoscaling simulated over a diurnal day, against the fleet the cost model sized.

Minute by minute: demand from the day's hourly rates (linearly interpolated); the controller asks
for ceil(demand / (per_instance_rps * target_utilization)) instances, clamped to [min, max]. New
instances serve only after ``cold_start_s``; instances are removed only after demand stayed low
for ``scale_down_delay_s``. The result compares instance-hours with an always-on peak fleet, and
counts minutes where ready capacity fell short of demand (SLA at risk).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from perf.errors import CostError


@dataclass(frozen=True)
class Policy:
    target_utilization: float = 0.7      # per-instance load the HPA aims for (fraction of SLA throughput)
    cold_start_s: float = 120.0          # pod start + model load + warmup until ready
    scale_down_delay_s: float = 600.0    # HPA scale-down stabilization window
    scale_up_delay_s: float = 0.0        # HPA scale-up stabilization window
    min_replicas: int = 1
    max_replicas: int = 10

    def __post_init__(self) -> None:
        if not 0 < self.target_utilization <= 1:
            raise CostError(f"target_utilization must be in (0, 1], got {self.target_utilization}")
        if self.min_replicas < 1 or self.max_replicas < self.min_replicas:
            raise CostError(f"replicas: need 1 <= min ({self.min_replicas}) <= max ({self.max_replicas})")
        if self.cold_start_s < 0 or self.scale_down_delay_s < 0 or self.scale_up_delay_s < 0:
            raise CostError("delays must be >= 0 s")


@dataclass
class SimResult:
    policy: Policy
    instance_hours: float
    always_on_instance_hours: float
    idle_saved_fraction: float
    short_minutes: int           # minutes where ready capacity < demand
    max_ready: int
    min_ready: int
    timeline: list[dict]

    def as_dict(self) -> dict:
        return asdict(self)


def diurnal_profile(average_rps: float, peak_to_average: float, hours: int = 24, peak_hour: float = 14.0,
                    floor: float = 0.05) -> np.ndarray:
    """Hourly rates of a day with the given mean and peak: a raised cosine sharpened until
    mean/peak = 1/peak_to_average, never below ``floor`` x peak. One shape for sizing, simulation
    and replayed traces."""
    if average_rps < 0 or peak_to_average < 1:
        raise CostError("average_rps must be >= 0 and peak_to_average >= 1")
    if 1 / peak_to_average <= floor:
        raise CostError(f"peak_to_average {peak_to_average} is too spiky for a diurnal day (max {1 / floor:.0f})")
    h = np.arange(hours)
    base = 0.5 * (1 + np.cos(2 * np.pi * (h - peak_hour) / 24.0))
    def ratio(k: float) -> float:
        return floor + (1 - floor) * float(np.mean(base ** k))
    lo, hi = 0.0, 200.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ratio(mid) > 1 / peak_to_average else (lo, mid)
    shape = floor + (1 - floor) * base ** ((lo + hi) / 2)
    return shape / shape.mean() * average_rps


def minute_demand(hourly_rps: np.ndarray) -> np.ndarray:
    hours = np.arange(len(hourly_rps) + 1)
    rates = np.append(hourly_rps, hourly_rps[0])       # wrap to the next day's first hour
    return np.interp(np.arange(len(hourly_rps) * 60) / 60.0, hours, rates)


def simulate(hourly_rps: np.ndarray, per_instance_rps: float, policy: Policy, step_s: float = 60.0) -> SimResult:
    if per_instance_rps <= 0:
        raise CostError("per-instance throughput under the SLA must be > 0")
    demand = minute_demand(np.asarray(hourly_rps, float))
    per_target = per_instance_rps * policy.target_utilization
    ready = policy.min_replicas
    pending: list[float] = []          # ready times of starting instances
    low_since: float | None = None
    high_since: float | None = None
    inst_seconds = 0.0
    short = 0
    timeline = []
    for i, d in enumerate(demand):
        t = i * step_s
        ready += sum(1 for r in pending if r <= t)
        pending = [r for r in pending if r > t]
        want = min(policy.max_replicas, max(policy.min_replicas, math.ceil(d / per_target - 1e-9)))
        total = ready + len(pending)
        if want > total:
            high_since = t if high_since is None else high_since
            if t - high_since >= policy.scale_up_delay_s:
                pending += [t + policy.cold_start_s] * (want - total)
                high_since = None
            low_since = None
        elif want < total:
            low_since = t if low_since is None else low_since
            high_since = None
            if t - low_since >= policy.scale_down_delay_s:
                drop = min(total - want, ready - policy.min_replicas if ready > policy.min_replicas else 0)
                ready -= max(0, drop)
                low_since = None
        else:
            low_since = high_since = None
        if ready * per_instance_rps < d:
            short += 1
        inst_seconds += (ready + len(pending)) * step_s   # starting instances are billed too
        timeline.append({"minute": i, "demand_rps": float(d), "ready": ready, "starting": len(pending)})
    peak_fleet = policy.max_replicas
    always_on = peak_fleet * len(demand) * step_s / 3600.0
    used = inst_seconds / 3600.0
    return SimResult(policy, used, always_on, 1 - used / always_on, short,
                     max(x["ready"] for x in timeline), min(x["ready"] for x in timeline), timeline)


def diurnal_trace(average_rps: float, peak_to_average: float, seconds_per_hour: float, seed: int = 0) -> np.ndarray:
    """A day compressed, for replay by the load generator: each hour becomes ``seconds_per_hour`` of
    Poisson arrivals at that hour's rate."""
    from perf.measure.loadgen import poisson_arrivals
    parts = []
    for i, r in enumerate(diurnal_profile(average_rps, peak_to_average)):
        parts.append(i * seconds_per_hour + poisson_arrivals(r, seconds_per_hour, seed + i))
    return np.concatenate(parts)
