"""Judging two picks on one server, with a judge neither tuner designed: each pick measured at one grid
of concurrencies with windows of one length, in turn for several rounds; a pick's score in a round
is its best throughput at a grid load whose latency percentile met the SLA (as Model Analyzer and a
user reading perf_analyzer score it). A config that swings across the SLA at its load falls to the
grid load below it in that round. The grid is the same for every contender: fractions of the
highest concurrency at which any of them reported meeting the SLA.

Two designs differ in window length and grid, so a pick that wins under one only by how that one
quantizes loads, or by how long it averages, shows it under the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from build_engines.spec import ServingConfig
from perf.errors import PerfAnalyzerError, SlaUnmet
from perf.measure import analyzer
from perf.measure.frontier import Sla
from perf.measure.replicates import in_turn, ratio
from perf.measure.results import Interval


@dataclass(frozen=True)
class JudgeDesign:
    """A window length and a grid of concurrencies, as fractions of the reference load: the highest
    concurrency at which any contender reported meeting the SLA in its own search (so the grid spans
    every contender's SLA edge, whichever tuner reported it, and the same grid serves both)."""

    name: str
    window_ms: int
    fractions: tuple[float, ...]

    def loads(self, reference: float) -> tuple[int, ...]:
        return tuple(sorted({max(1, round(f * reference)) for f in self.fractions}))


# two designs, differing in window length and grid; a grid with a fixed top (the 4-32) was met at
# its top by every contender on digits (SLA edge near c=45) and told nothing
DESIGNS = (JudgeDesign("3 s windows, 0.5-1.5x the SLA concurrency", 3000, (0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5)),
           JudgeDesign("2 s windows, 0.6-1.4x the SLA concurrency", 2000, (0.6, 0.8, 0.95, 1.05, 1.2, 1.4)))


@dataclass(frozen=True)
class GridPoint:
    concurrency: int
    throughput: float          # 0: not measured (unstable)
    latency_ms: float | None


@dataclass(frozen=True)
class GridScore:
    """One contender in one round."""

    throughput: float          # best throughput at a grid load that met the SLA (0: none did)
    concurrency: int | None
    points: tuple[GridPoint, ...]


@dataclass
class Judged:
    """One design's rounds: each contender's score per round, and the ratios asked for."""

    design: JudgeDesign
    loads: tuple[int, ...]                 # the grid (design.loads of the reference)
    rounds: int
    labels: dict[str, str]                 # contender -> its config
    scores: dict[str, list[GridScore]]
    ratios: dict[str, Interval]            # "a / b" -> per-round ratio, median and 95 % interval
    # the pairs asked for with no ratio, and why: b met the SLA at no grid load in any round (a won outright);
    # the rounds are kept, so a judge that cannot divide loses nothing it measured
    unmet: dict[str, str] = field(default_factory=dict)


def grid_score(points: list[GridPoint], sla: Sla) -> GridScore:
    met = [p for p in points if p.latency_ms is not None and p.latency_ms <= sla.ms]
    best = max(met, key=lambda p: p.throughput, default=None)
    return GridScore(best.throughput if best else 0.0, best.concurrency if best else None, tuple(points))


def edge_throughput(points: tuple[GridPoint, ...], sla_ms: float) -> float:
    """A coarser grid's view corrected: the throughput where the latency percentile crosses the SLA,
    interpolated (in latency) between the grid score's load and the next measured load, when that one
    missed; the score's own throughput when nothing above it was measured; 0 when no load met the SLA.
    The grid score alone rewards a config whose edge sits just above a grid load over one whose edge sits
    just below the next (digits, 2026-12-04: Model Analyzer's pick met p99 <= 10 ms at c=24 and missed at
    c=37 by 0.2-1.5 ms in every round)."""
    met = [p for p in points if p.latency_ms is not None and p.latency_ms <= sla_ms]
    if not met:
        return 0.0
    best = max(met, key=lambda p: p.throughput)
    above = [p for p in points if p.concurrency > best.concurrency and p.latency_ms is not None]
    nxt = min(above, key=lambda p: p.concurrency, default=None)
    if nxt is None or nxt.latency_ms <= sla_ms or nxt.latency_ms <= best.latency_ms:
        return best.throughput
    f = (sla_ms - best.latency_ms) / (nxt.latency_ms - best.latency_ms)
    return best.throughput + f * (nxt.throughput - best.throughput)


def edge_ratios(judged: Judged, sla_ms: float) -> dict[str, Interval]:
    """The ratios ``judged`` gives (and those it could not), by ``edge_throughput`` instead of the grid
    score; a pair whose denominator has no edge in any round is left out."""
    thr = {k: [edge_throughput(s.points, sla_ms) for s in v] for k, v in judged.scores.items()}
    pairs = [tuple(name.split(" / ")) for name in [*judged.ratios, *judged.unmet]]
    return pair_ratios(thr, [(a, b) for a, b in pairs if a in thr and b in thr])[0]


def measure_grid(url: str, model: str, loads: tuple[int, ...], window_ms: int, settings: analyzer.PerfSettings,
                 sla: Sla) -> GridScore:
    """The grid's loads in order, stopping at the second load in a row that misses the SLA (in a closed
    loop latency grows with concurrency; one spike does not end it)."""
    s = replace(settings, measurement_interval_ms=window_ms)
    points: list[GridPoint] = []
    misses = 0
    for c in loads:
        try:
            p = analyzer.measure(url, model, "concurrency", c, s)
            points.append(GridPoint(c, p.throughput_infer_per_s, sla.latency_ms(p)))
            ok = sla.met(p)
        except PerfAnalyzerError:          # unstable or shed: a miss at this load
            points.append(GridPoint(c, 0.0, None))
            ok = False
        misses = 0 if ok else misses + 1
        if misses >= 2:
            break
    return grid_score(points, sla)


def judge(http_url: str, grpc_url: str, repository: Path, contenders: dict[str, tuple[str, ServingConfig]],
          labels: dict[str, str], design: JudgeDesign, reference: float, settings: analyzer.PerfSettings, sla: Sla,
          rounds: int, pairs: list[tuple[str, str]], progress: Callable[[str], None] = print) -> Judged:
    """``rounds`` rounds in turn (A B, B A, ...: ``replicates.schedule``), each contender loaded afresh
    before it is measured at the design's grid around ``reference``; the ratio of each pair (num, den)
    within each round."""
    loads = design.loads(reference)
    url = grpc_url if settings.protocol == "grpc" else http_url
    scores = in_turn(http_url, repository, contenders, rounds,
                     lambda _, model: measure_grid(url, model, loads, design.window_ms, settings, sla),
                     lambda r, out: progress(f"  [{design.name}] round {r + 1}/{rounds}: " + ", ".join(
                         f"{k} {v[-1].throughput:.0f}/s at c={v[-1].concurrency}" for k, v in out.items())))
    ratios, unmet = pair_ratios({k: [s.throughput for s in v] for k, v in scores.items()}, pairs)
    return Judged(design, loads, rounds, labels, scores, ratios, unmet)


def pair_ratios(throughput: dict[str, list[float]], pairs: list[tuple[str, str]]) -> tuple[dict[str, Interval],
                                                                                          dict[str, str]]:
    """Each pair's per-round ratio ("a / b" -> interval), and the pairs with none ("a / b" -> why)."""
    ratios, unmet = {}, {}
    for a, b in pairs:
        try:
            ratios[f"{a} / {b}"] = ratio(throughput, a, b)
        except SlaUnmet as e:
            unmet[f"{a} / {b}"] = str(e)
    return ratios, unmet
