"""One config's capacity under a latency SLA, found with few perf_analyzer runs. Shared by the tuner,
its final round, the grid it is judged against and the head-to-head judge, so all rank configs alike.

Two figures per config:
  throughput  the best measured point whose percentile met the SLA: what the cost is priced on.
  capacity    the throughput at which the percentile reaches the SLA, interpolated between the last
              load that met it and the next that missed: what configs are ranked on. The measured
              best alone is quantized by the loads tried (a config met at c=18 and missed at 24 in
              one round and met at 24 in the next moved by 25 % in bench-tuner's head to head); the
              interpolation stays between two measured throughputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from perf.errors import BadSettings, PerfAnalyzerError, Shed, UnstableMeasurement
from perf.measure import analyzer

AIM = 0.9        # a predicted load aims 10 % inside the SLA (down) or past it (up), so it brackets the SLA


@dataclass(frozen=True)
class Sla:
    ms: float
    percentile: str = "p99"

    def __post_init__(self) -> None:
        if self.percentile not in ("p50", "p90", "p95", "p99"):
            raise BadSettings(f"percentile {self.percentile!r}: use p50, p90, p95 or p99")
        if not self.ms > 0:
            raise BadSettings(f"the SLA must be a positive latency in ms, got {self.ms}")

    def latency_ms(self, p: analyzer.PerfPoint) -> float:
        return getattr(p, f"{self.percentile}_us") / 1e3

    def met(self, p: analyzer.PerfPoint | None) -> bool:
        return p is not None and self.latency_ms(p) <= self.ms

    def __str__(self) -> str:
        return f"{self.percentile} <= {self.ms:g} ms"


@dataclass(frozen=True)
class Score:
    throughput: float            # inferences/s at the best measured load within the SLA (0: none met it)
    concurrency: float | None
    latency_ms: float | None     # the SLA percentile there
    capacity: float              # inferences/s where the percentile reaches the SLA (interpolated; 0: none met it)

    @property
    def meets_sla(self) -> bool:
        return self.throughput > 0

    def text(self, percentile: str = "p99") -> str:
        if not self.meets_sla:
            return "misses the SLA"
        return (f"{self.throughput:.0f} infer/s at c={self.concurrency:g} ({percentile} {self.latency_ms:.2f} ms), "
                f"capacity {self.capacity:.0f}")


def best_within(points: Sequence[analyzer.PerfPoint], sla: Sla) -> analyzer.PerfPoint | None:
    """The highest-throughput point that met the SLA; None if none did."""
    met = [p for p in points if sla.met(p)]
    return max(met, key=lambda p: p.throughput_infer_per_s) if met else None


def score(points: Sequence[analyzer.PerfPoint], sla: Sla, unmeasured: Sequence[float] = ()) -> Score:
    """The best measured point within the SLA, and the capacity: from it to the next higher load that
    missed, the throughput where the percentile crosses the SLA (linear in the percentile; throughput
    flattens as latency grows, so this errs low). No higher miss measured (saturated, or the cap), or
    the next higher load could not be measured (``unmeasured``): the best measured throughput."""
    best = best_within(points, sla)
    if best is None:
        return Score(0.0, None, None, 0.0)
    lat, thr = sla.latency_ms(best), best.throughput_infer_per_s
    cap = thr
    above = [p for p in points if p.load > best.load and not sla.met(p)]
    lost = [c for c in unmeasured if c > best.load]
    if above and not (lost and min(lost) < min(p.load for p in above)):
        miss = min(above, key=lambda p: p.load)
        f = (sla.ms - lat) / (sla.latency_ms(miss) - lat)
        cap = thr + max(0.0, miss.throughput_infer_per_s - thr) * f
    return Score(thr, best.load, lat, cap)


def probe(url: str, model: str, settings: analyzer.PerfSettings,
          missed: Callable[[int, PerfAnalyzerError], None] | None = None,
          catch: tuple[type[PerfAnalyzerError], ...] = (Shed, UnstableMeasurement)
          ) -> Callable[[int], analyzer.PerfPoint | None]:
    """``at(c)`` for frontier: perf_analyzer at concurrency c; a load it cannot serve within the queue
    policy (shed) or measure stably is None, a miss, reported to ``missed``."""
    def at(c: int) -> analyzer.PerfPoint | None:
        try:
            return analyzer.measure(url, model, "concurrency", c, settings)
        except catch as e:
            if missed:
                missed(c, e)
            return None
    return at


def frontier(at: Callable[[int], analyzer.PerfPoint | None], sla: Sla, start: int = 1, cap: int = 64,
             refine: float = 1.5, predict: bool = True, unmeasured: list[float] | None = None
             ) -> tuple[list[analyzer.PerfPoint], int]:
    """The highest concurrency at which one config meets its SLA, found with few loads: from ``start``
    down until a load meets it, up until one misses it (or the cap, or two loads in a row gain < 3 %),
    then refined while the last load that met it and the first that missed are ``refine`` or more
    apart. Steps are halvings and doublings; with ``predict`` each step is instead aimed at where
    the SLA should fall by Little's law (past saturation a closed loop's latency grows in proportion
    to its concurrency, and grows slower before: from a load that met the SLA, the SLA concurrency
    is at least c x SLA / latency, and from one that missed it, at most that; aimed 10 % past it
    going up, 10 % inside it going down, within a factor of 4), and each refinement at the load
    where the latency crosses the SLA on the line between the two, or halfway when that is in
    the lower quarter (a latency spike). ``at(c)`` is None where nothing could be measured (a miss;
    its load is appended to ``unmeasured`` for ``score``). Returns the measured points by load and
    the number of measurements."""
    seen: dict[int, analyzer.PerfPoint | None] = {}

    def met(c: int) -> bool:
        if c not in seen:
            seen[c] = at(c)
        return sla.met(seen[c])

    def aimed(c: int, up: bool) -> int:
        p = seen[c]
        if not predict or p is None:
            return 2 * c if up else c // 2
        target = c * sla.ms / max(sla.latency_ms(p), 1e-6)
        if up:
            return min(4 * c, max(c + 1, math.ceil(target / AIM)))
        return max(c // 4, min(c - 1, math.floor(target * AIM)))

    def between(lo: int, hi: int) -> int:
        """Halfway; with ``predict``, where the latency crosses the SLA on the line between them, unless
        that is in the lower quarter: a p99 spike at ``hi`` would make it creep up from ``lo``."""
        mid, a, b = (lo + hi) // 2, seen[lo], seen[hi]
        if predict and b is not None:
            la, lb = sla.latency_ms(a), sla.latency_ms(b)
            x = (sla.ms - la) / (lb - la)
            if x >= 0.25:
                mid = int(lo + (hi - lo) * x)
        return min(hi - 1, max(lo + 1, mid))

    c = max(1, min(start, cap))
    while not met(c) and c > 1:
        c = max(1, aimed(c, up=False))
    if met(c):
        flat = 0
        while c < cap:
            misses = [k for k in seen if k > c and not sla.met(seen[k])]
            nxt = min([cap, aimed(c, up=True)] + misses)
            if not met(nxt):
                break
            flat = flat + 1 if seen[nxt].throughput_infer_per_s < 1.03 * seen[c].throughput_infer_per_s else 0
            c = nxt
            if flat >= 2:
                break                                   # saturated: more load only adds latency
        while True:
            c = max(k for k in seen if met(k))
            above = [k for k in seen if k > c and not met(k)]
            if not above or min(above) / c < refine or min(above) - c < 2:
                break
            met(between(c, min(above)))
    if unmeasured is not None:
        unmeasured.extend(float(k) for k, p in seen.items() if p is None)
    return sorted((p for p in seen.values() if p is not None), key=lambda p: p.load), len(seen)
