"""Cost model: instance catalog, cost per request, fleet sizing and the monthly bill.

Throughput always means what one instance sustains *under the latency SLA* (measured), never a
peak number. Hand-checkable: cost per request = price per hour / 3600 / requests per second.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from perf.errors import CostError

CATALOG = Path(__file__).with_name("catalog.toml")
HOURS_PER_MONTH = 730.0
SECONDS_PER_DAY = 86400.0


@dataclass(frozen=True)
class Instance:
    name: str
    usd_per_hour: float
    vcpus: int = 0
    memory_gib: float = 0
    accelerator: str = ""
    gpus: int = 0

    def __post_init__(self) -> None:
        if not (self.usd_per_hour > 0) or math.isinf(self.usd_per_hour):
            raise CostError(f"instance {self.name!r}: price must be a positive number of USD per hour, got {self.usd_per_hour}")


@dataclass(frozen=True)
class CatalogRef:
    """Which price list a bill used: where it came from and when its prices were read."""

    prices_read: str
    source: str


@dataclass(frozen=True)
class Catalog:
    instances: dict[str, Instance]
    prices_read: str
    source: str

    def ref(self) -> CatalogRef:
        return CatalogRef(self.prices_read, self.source)

    def get(self, name: str, price_per_hour: float | None = None) -> Instance:
        """A catalog instance, or a user-priced one (``price_per_hour`` overrides or adds)."""
        if price_per_hour is not None:
            base = self.instances.get(name)
            return Instance(name, float(price_per_hour), *(
                (base.vcpus, base.memory_gib, base.accelerator, base.gpus) if base else ()))
        if name not in self.instances:
            raise CostError(f"instance {name!r} is not in the catalog ({', '.join(sorted(self.instances))}); "
                            f"give its price with --price-per-hour")
        return self.instances[name]

    def this_machine(self, name: str | None = None, price_per_hour: float | None = None,
                     memory_gib: float | None = None) -> tuple[Instance, str]:
        """The instance this machine's measurements are priced as, and why: ``name`` (and its price) when
        given; otherwise the cheapest CPU kind with at least this machine's cores and ``memory_gib`` (what
        the served models need, measured; this machine's memory when unknown)."""
        if name:
            return self.get(name, price_per_hour), "given with --instance" + (" and --price-per-hour" if price_per_hour else "")
        if price_per_hour is not None:
            return Instance("this machine", float(price_per_hour), os.cpu_count() or 0, _memory_gib()), "--price-per-hour"
        cores, mem = os.cpu_count() or 1, memory_gib or 0.0
        fits = [i for i in self.instances.values() if i.gpus == 0 and i.vcpus >= cores and i.memory_gib >= mem]
        if not fits:
            raise CostError(f"no CPU instance in the catalog has this machine's {cores} cores and {mem:.0f} GiB; name "
                            "one with --instance (and --price-per-hour if it is not listed)")
        best = min(fits, key=lambda i: (i.usd_per_hour, i.vcpus))
        if memory_gib is None:
            return best, (f"matched by cores: the cheapest catalog CPU kind with >= {cores} vCPUs (this machine's cores; "
                          "no measured memory to match: give --instance if the models need more)")
        return best, (f"matched by cores and memory: the cheapest catalog CPU kind with >= {cores} vCPUs (this machine's "
                      f"cores) and >= {mem:.1f} GiB (the served models' measured memory)")

    def gpu_instances(self) -> list[Instance]:
        return [i for i in self.instances.values() if i.gpus > 0]


def _memory_gib() -> float:
    try:
        kb = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal:"))
        return kb / 2**20
    except (OSError, StopIteration, ValueError):
        return 0.0


def load_catalog(path: Path | None = None) -> Catalog:
    raw = tomllib.loads(Path(path or CATALOG).read_text())
    if "prices_read" not in raw:
        raise CostError(f"{path or CATALOG}: 'prices_read' (the date the prices were read) is missing")
    inst = {}
    for name, v in raw.get("instances", {}).items():
        if "usd_per_hour" not in v:
            raise CostError(f"{path or CATALOG}: instances.{name}.usd_per_hour is missing")
        inst[name] = Instance(name, float(v["usd_per_hour"]), int(v.get("vcpus", 0)), float(v.get("memory_gib", 0)),
                              str(v.get("accelerator", "")), int(v.get("gpus", 0)))
    if not inst:
        raise CostError(f"{path or CATALOG}: no instances")
    return Catalog(inst, str(raw["prices_read"]), str(raw.get("source", "")))


def cost_per_request(usd_per_hour: float, requests_per_s: float) -> float:
    if not usd_per_hour > 0:
        raise CostError(f"price must be > 0 USD/hour, got {usd_per_hour}")
    if not requests_per_s > 0:
        raise CostError("throughput under the SLA is 0: no configuration meets the SLA on this instance, "
                        "so no cost per request can be given; relax the SLA or measure another config")
    return usd_per_hour / 3600.0 / requests_per_s


def cost_per_million(usd_per_hour: float, requests_per_s: float) -> float:
    return cost_per_request(usd_per_hour, requests_per_s) * 1e6


@dataclass(frozen=True)
class Traffic:
    requests_per_day: float
    peak_to_average: float = 3.0

    def __post_init__(self) -> None:
        if self.requests_per_day < 0 or math.isnan(self.requests_per_day):
            raise CostError(f"requests_per_day must be >= 0, got {self.requests_per_day}")
        if self.peak_to_average < 1:
            raise CostError(f"peak_to_average must be >= 1 (peak cannot be below the average), got {self.peak_to_average}")

    @property
    def average_rps(self) -> float:
        return self.requests_per_day / SECONDS_PER_DAY

    @property
    def peak_rps(self) -> float:
        return self.average_rps * self.peak_to_average


@dataclass(frozen=True)
class FleetSize:
    instance: str
    per_instance_rps: float
    usable_rps: float            # per instance after headroom
    peak_instances: int
    min_instances: int           # the warm pool
    monthly_usd_always_on_peak: float
    usd_per_million: float | None


def size_fleet(instance: Instance, per_instance_rps: float, traffic: Traffic, headroom: float = 0.2,
               min_warm: int = 1) -> FleetSize:
    """Instances for the peak with ``headroom`` spare capacity each (ceil), never fewer than ``min_warm``."""
    if not 0 <= headroom < 1:
        raise CostError(f"headroom must be in [0, 1), got {headroom}")
    if min_warm < 1:
        raise CostError(f"the warm pool must keep at least 1 instance, got {min_warm}")
    if not per_instance_rps > 0:
        raise CostError(f"{instance.name}: throughput under the SLA is 0; no configuration meets the SLA there")
    usable = per_instance_rps * (1 - headroom)
    peak = max(min_warm, math.ceil(traffic.peak_rps / usable - 1e-9))
    monthly = peak * instance.usd_per_hour * HOURS_PER_MONTH
    per_m = cost_per_million(instance.usd_per_hour, per_instance_rps) if traffic.requests_per_day > 0 else None
    return FleetSize(instance.name, per_instance_rps, usable, peak, min_warm, monthly, per_m)


def monthly_cost_per_million(monthly_usd: float, traffic: Traffic) -> float:
    """What the fleet's bill comes to per 1M requests actually served in the month."""
    served = traffic.requests_per_day * HOURS_PER_MONTH / 24.0
    if served <= 0:
        raise CostError("zero traffic: the bill cannot be spread over requests")
    return monthly_usd / served * 1e6
