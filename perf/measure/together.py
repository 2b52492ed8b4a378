"""Several models on one server, measured together: each driven by its own perf_analyzer at its share
of a traffic mix, all at the same time (``analyzer.measure_together``), each model's latency
percentile checked against its own SLA while the others run.

The capacity of a set of models is the largest common scale of the mix (total requests/s, each
model at its share of it) at which every model still meets its SLA. ``mix_capacity`` searches it:
up (or down) by GROW from a start until the SLA's edge is bracketed, then halves the bracket
(geometrically) until it is within REFINE; the capacity is the highest scale measured that met every
SLA, so it errs low by at most REFINE. A model alone is a mix of one: its solo capacity is found by
the same search, on the same server, so packed and solo numbers differ only by the company a model
keeps. A run in which a model was served less than SHORTFALL of what it was offered (the server fell
behind), shed requests (its queue policy) or found no measurement counts as a miss for that model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from perf.errors import BadSettings, PerfAnalyzerError, Shed
from perf.measure import analyzer
from perf.measure.frontier import Sla
from perf.measure.replicates import schedule

if TYPE_CHECKING:
    from build_engines.spec import ServingConfig

GROW = 2.0          # the step up or down until the SLA's edge is bracketed
REFINE = 1.15       # the bracket is halved until its ends are within 15 %
SHORTFALL = 0.9     # served under 90 % of the offered rate: the server did not keep up
FLOOR_RPS = 1.0     # a mix that misses an SLA at 1 request/s in all has no capacity
CAP_RPS = 1e5       # never offered more (a search that still meets every SLA there stops)


@dataclass(frozen=True)
class Driven:
    """One model of a mix: its name in the fleet, the Triton model driven, its share of the mix's
    requests, its own SLA and its real inputs (perf_analyzer's --input-data)."""

    name: str
    model: str
    share: float
    sla: Sla
    input_data: str | None


@dataclass
class ModelAt:
    """One model in one run of a mix: what it was offered and served, and its SLA percentile."""

    name: str
    offered_rps: float
    served_rps: float
    latency_ms: float | None      # None: the run gave no measurement (shed, unstable, failed)
    meets_sla: bool
    why: str = ""                 # what missed, "" where the SLA was met


@dataclass
class MixPoint:
    scale_rps: float              # the mix's total requests/s offered
    models: list[ModelAt]

    @property
    def meets_sla(self) -> bool:
        return all(m.meets_sla for m in self.models)

    def missed(self) -> list[str]:
        return [m.name for m in self.models if not m.meets_sla]

    def text(self) -> str:
        return f"{self.scale_rps:.0f} req/s: " + ", ".join(
            f"{m.name} {m.latency_ms:.1f} ms" if m.latency_ms is not None else f"{m.name} -" for m in self.models) \
            + ("" if self.meets_sla else " (missed: " + "; ".join(f"{m.name}: {m.why}" for m in self.models
                                                              if not m.meets_sla) + ")")


@dataclass
class MixCapacity:
    capacity_rps: float           # the highest scale measured at which every model met its SLA (0: none)
    limiting: list[str]           # the models that missed at the first scale measured above it
    points: list[MixPoint] = field(default_factory=list)

    def at_capacity(self) -> MixPoint | None:
        return next((p for p in self.points if p.scale_rps == self.capacity_rps), None)


def check_mix(mix: Sequence[Driven]) -> None:
    if not mix:
        raise BadSettings("a mix needs at least one model")
    if any(d.share <= 0 for d in mix) or abs(sum(d.share for d in mix) - 1.0) > 1e-6:
        raise BadSettings(f"the shares of a mix are > 0 and sum to 1, got {[d.share for d in mix]}")


def judged(d: Driven, offered: float, result: analyzer.PerfPoint | PerfAnalyzerError) -> ModelAt:
    """One model's run against its SLA."""
    if isinstance(result, PerfAnalyzerError):
        why = "requests shed by its queue policy" if isinstance(result, Shed) else str(result).splitlines()[0]
        return ModelAt(d.name, offered, 0.0, None, False, why)
    served = result.requests_per_s
    ms = d.sla.latency_ms(result)
    if ms > d.sla.ms:
        return ModelAt(d.name, offered, served, ms, False, f"{d.sla.percentile} {ms:.2f} ms > {d.sla.ms:g} ms")
    if served < SHORTFALL * offered:
        return ModelAt(d.name, offered, served, ms, False, f"served {served:.0f} of {offered:.0f} req/s offered")
    return ModelAt(d.name, offered, served, ms, True)


def run_mix(url: str, mix: Sequence[Driven], scale_rps: float, settings: analyzer.PerfSettings) -> MixPoint:
    """Every model of the mix at its share of ``scale_rps``, at the same time."""
    check_mix(mix)
    loads = [analyzer.RateLoad(d.model, scale_rps * d.share, d.input_data) for d in mix]
    results = analyzer.measure_together(url, loads, settings)
    return MixPoint(scale_rps, [judged(d, job.rate, r) for d, job, r in zip(mix, loads, results)])


def mix_capacity(url: str, mix: Sequence[Driven], settings: analyzer.PerfSettings, start_rps: float,
                 refine: float = REFINE, progress: Callable[[str], None] | None = None,
                 measure: Callable[[float], MixPoint] | None = None) -> MixCapacity:
    """The largest common scale of the mix at which every model meets its SLA (see the module's doc).
    ``measure``: how one scale is measured (default ``run_mix`` on ``url``)."""
    if not refine > 1.0 or not start_rps > 0:
        raise BadSettings(f"refine must be > 1 and the start > 0 req/s, got {refine}, {start_rps}")
    run = measure or (lambda s: run_mix(url, mix, s, settings))
    seen: dict[float, MixPoint] = {}

    def met(s: float) -> bool:
        if s not in seen:
            seen[s] = run(s)
            if progress:
                progress(f"    {seen[s].text()}")
        return seen[s].meets_sla

    lo: float | None = None
    hi: float | None = None
    s = min(max(start_rps, FLOOR_RPS), CAP_RPS)
    if not met(s):                  # the start decides the direction: a miss there must repeat
        again = run(s)
        if progress:
            progress(f"    again {again.text()}")
        if again.meets_sla:
            seen[s] = again
    if met(s):
        lo = s
        while hi is None and lo * GROW <= CAP_RPS:
            nxt = lo * GROW
            lo, hi = (nxt, None) if met(nxt) else (lo, nxt)
    else:
        hi = s
        while lo is None:
            nxt = hi / GROW
            if nxt < FLOOR_RPS:
                return MixCapacity(0.0, seen[hi].missed(), list(seen.values()))
            lo, hi = (nxt, hi) if met(nxt) else (None, nxt)
    while hi is not None and hi / lo > refine:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if met(mid) else (lo, mid)
    points = [seen[k] for k in sorted(seen)]
    return MixCapacity(lo, seen[hi].missed() if hi is not None else [], points)


def warm_up(url: str, mix: Sequence[Driven], settings: analyzer.PerfSettings, scale_rps: float = 20.0) -> MixPoint:
    """One run of the whole mix at a low rate, not counted: the first requests after a load (sessions,
    allocators, the stubs' first calls) are slower than any that follow."""
    return run_mix(url, mix, scale_rps, settings)


def capacities_in_turn(url: str, mixes: Mapping[str, Sequence[Driven]], settings: analyzer.PerfSettings,
                       start_rps: Callable[[str, Mapping[str, list[MixCapacity]]], float], rounds: int,
                       refine: float = REFINE, progress: Callable[[str], None] = print,
                       before: Callable[[str], None] | None = None) -> dict[str, list[MixCapacity]]:
    """Each mix's capacity once per round, the mixes in turn (A B C, then C B A: ``schedule``), each
    round's search starting where that mix's last one ended (the first at ``start_rps(label, the
    capacities so far)``): a drift of the shared machine weighs on every mix alike, and a ratio taken
    within a round (packed / solo) cancels it. ``before(label)`` runs before each mix is measured (to
    load the configs it is served with)."""
    out: dict[str, list[MixCapacity]] = {k: [] for k in mixes}
    for r, order in enumerate(schedule(list(mixes), rounds)):
        for label in order:
            if before:
                before(label)
            prev = out[label][-1].capacity_rps if out[label] else 0.0
            progress(f"  round {r + 1}/{rounds}: {label}")
            start = prev or start_rps(label, out)
            out[label].append(mix_capacity(url, mixes[label], settings, start, refine, progress))
    return out


@dataclass(frozen=True)
class Packed:
    """One way of serving a set of models together: each model's config (loaded before it is measured)
    and the mix driven."""

    mix: tuple[Driven, ...]
    configs: tuple[tuple[str, "ServingConfig"], ...]      # (Triton model, its serving config)


def load_configs(http_url: str, repository, configs: Sequence[tuple[str, "ServingConfig"]],
                 mix: Sequence[Driven]) -> None:
    """Each (model, serving config) loaded; then every driven model that is not one of them (an ensemble
    over a model just reloaded, which Triton leaves with no available version) loaded again, its
    max_batch_size lowered to its reloaded steps' where theirs is lower (Triton refuses an ensemble
    that allows larger batches than a model it calls)."""
    from build_engines.repository import read_config
    from perf.measure.sweeps import load_candidate, load_model
    for model, serving in configs:
        load_candidate(http_url, repository, model, serving)
    batch = {m: s.max_batch_size for m, s in configs}
    for d in mix:
        if d.model not in batch:
            cfg = read_config(Path(repository) / d.model)
            steps = [batch[s.model_name] for s in cfg.ensemble_scheduling.step if s.model_name in batch]
            if cfg.platform != "ensemble" or not steps:
                continue                 # not over a model just reloaded: it keeps the config it is served with
            cfg.max_batch_size = min([cfg.max_batch_size, *steps])
            load_model(http_url, d.model, cfg, " again after its parts were reloaded")


def packed_in_turn(http_url: str, grpc_url: str, repository, alternatives: Mapping[str, Packed],
                   settings: analyzer.PerfSettings, start_rps: float, rounds: int, refine: float = REFINE,
                   progress: Callable[[str], None] = print) -> dict[str, list[MixCapacity]]:
    """Each alternative's capacity once per round, in turn (``schedule``), its configs (re)loaded before
    every measurement so that none gets warm measurements the others do not; each search starts where
    that alternative's last one ended (the first at ``start_rps``)."""
    out: dict[str, list[MixCapacity]] = {k: [] for k in alternatives}
    for r, order in enumerate(schedule(list(alternatives), rounds)):
        for label in order:
            alt = alternatives[label]
            load_configs(http_url, repository, alt.configs, alt.mix)
            warm_up(grpc_url, alt.mix, settings)
            prev = out[label][-1].capacity_rps if out[label] else 0.0
            progress(f"  round {r + 1}/{rounds}: {label}")
            out[label].append(mix_capacity(grpc_url, alt.mix, settings, prev or start_rps, refine, progress))
    return out
