"""The fleet spec: several models (ours or a user's) that may share machines, each with its share of
the traffic and its own SLA. A TOML file, checked as a model spec is: unknown keys refused with the
closest valid one, every value type-checked, one line naming the file and the key.

    name = "house"
    rounds = 3                      # interleaved rounds of every measurement (the intervals)

    [[model]]
    spec = "digits"                 # a bundled spec, or a .toml path relative to this file
    requests_per_day = 4e7          # or traffic_trace = "day.txt": 24 hourly req/s
    sla_ms = 10
    percentile = "p99"

Each model is served as its own solo tune left it (the newest `make report MODEL=...` / `tck tune`
results for it), else as its spec's [serving] table says with ``variant`` (default fp32). A text
ensemble's spec (MiniLM's) is driven through the ensemble, with strings, as its clients call it.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from build_engines.errors import SpecError
from build_engines.spec import ModelSpec, load_spec, one_of, table_of
from perf.cost import autoscale
from perf.errors import CostError
from perf.measure.frontier import Sla

MAX_MODELS = 4          # every grouping is measured: 2^4 - 1 = 15 sets of models for four
PERCENTILES = ("p50", "p90", "p95", "p99")
VARIANTS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class ModelTable:
    """One [[model]] table as written."""

    spec: str
    sla_ms: float
    percentile: str = "p99"
    requests_per_day: float | None = None
    peak_to_average: float = 3.0
    traffic_trace: str | None = None
    variant: str | None = None


@dataclass(frozen=True)
class FleetFile:
    """The fleet spec's top level as written."""

    name: str
    model: tuple[dict, ...]
    rounds: int = 3
    headroom: float = 0.2
    instance: str | None = None
    price_per_hour: float | None = None


@dataclass(frozen=True)
class Member:
    """One model of the fleet, checked: its spec, SLA, and its day (24 hourly req/s)."""

    spec: ModelSpec
    sla: Sla
    day: tuple[float, ...]
    traffic_source: str
    variant: str | None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def requests_per_day(self) -> float:
        return float(np.mean(self.day) * 86400)


@dataclass(frozen=True)
class Fleet:
    name: str
    path: Path
    members: tuple[Member, ...]
    rounds: int
    headroom: float
    instance: str | None
    price_per_hour: float | None

    def member(self, name: str) -> Member:
        return next(m for m in self.members if m.name == name)


def _fail(path: Path, key: str, why: str) -> SpecError:
    return SpecError(f"{path}: field '{key}' {why}", field=key)


def _day(path: Path, where: str, t: ModelTable) -> tuple[tuple[float, ...], str]:
    if (t.requests_per_day is None) == (t.traffic_trace is None):
        raise _fail(path, where, "needs one of requests_per_day or traffic_trace (24 hourly req/s), not both or none")
    if t.traffic_trace is not None:
        from perf.cost.campaign import day_from_trace
        trace = (path.parent / t.traffic_trace).resolve()
        try:
            return tuple(day_from_trace(trace).tolist()), f"traffic trace {trace.name}"
        except CostError as e:
            raise _fail(path, f"{where}.traffic_trace", str(e)) from e
    if not 0 < t.requests_per_day < math.inf:
        raise _fail(path, f"{where}.requests_per_day", f"must be a finite number > 0, got {t.requests_per_day:g}")
    if not t.peak_to_average >= 1:
        raise _fail(path, f"{where}.peak_to_average", f"must be >= 1, got {t.peak_to_average:g}")
    try:
        day = autoscale.diurnal_profile(t.requests_per_day / 86400, t.peak_to_average)
    except CostError as e:
        raise _fail(path, f"{where}.peak_to_average", str(e)) from e
    return tuple(day.tolist()), f"{t.requests_per_day:g} req/day, a diurnal curve peak/average {t.peak_to_average:g}"


def _member(path: Path, i: int, raw: dict) -> Member:
    where = f"model[{i}]"
    t = table_of(ModelTable, raw, where, path)
    one_of(path, f"{where}.percentile", t.percentile, PERCENTILES)
    if t.variant is not None:
        one_of(path, f"{where}.variant", t.variant, VARIANTS)
    if not 0 < t.sla_ms < math.inf:
        raise _fail(path, f"{where}.sla_ms", f"must be a finite number > 0 ms, got {t.sla_ms:g}")
    ref = str((path.parent / t.spec).resolve()) if Path(t.spec).suffix else t.spec
    try:
        spec = load_spec(ref)
    except SpecError as e:
        raise SpecError(f"{path}: field '{where}.spec': {e}", field=f"{where}.spec") from e
    day, source = _day(path, where, t)
    return Member(spec, Sla(t.sla_ms, t.percentile), day, source, t.variant)


def load_fleet(path: Path | str) -> Fleet:
    """The fleet spec at ``path``, every table and value checked, each model's spec loaded."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"fleet spec {str(path)!r} not found (no such file)")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: not valid TOML ({e})") from e
    top = table_of(FleetFile, raw, "", path)
    if not top.name or not top.name.replace("_", "").replace("-", "").isalnum():
        raise _fail(path, "name", f"must be letters, digits, '_' or '-' (it names files), got {top.name!r}")
    if top.price_per_hour is not None and not 0 < top.price_per_hour < math.inf:
        raise _fail(path, "price_per_hour", f"must be a finite number > 0, got {top.price_per_hour:g}")
    if not 1 <= len(top.model) <= MAX_MODELS:
        raise _fail(path, "model", f"lists {len(top.model)} models; a fleet spec takes 1 to {MAX_MODELS} "
                                   f"(every grouping of them is measured): split a larger fleet")
    if top.rounds < 1:
        raise _fail(path, "rounds", f"must be >= 1, got {top.rounds}")
    if not 0 <= top.headroom < 1:
        raise _fail(path, "headroom", f"must lie in [0, 1), got {top.headroom:g}")
    members = tuple(_member(path, i, m) for i, m in enumerate(top.model))
    names = [m.name for m in members]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise _fail(path, "model", f"names {', '.join(twice)} more than once: each model once, with its whole traffic")
    return Fleet(top.name, path.resolve(), members, top.rounds, top.headroom, top.instance, top.price_per_hour)
