"""The ratios a report states (batching gain, INT8/FP32), from interleaved replicates: every config is
measured once per round, in turn, for several rounds; a ratio is taken within each round (so a drift
of the shared machine hits numerator and denominator alike) and reported as the median with a 95 %
bootstrap interval. One sweep per config is good for curves, not for a ratio: repeat runs of single
sweeps moved these ratios by ~20 % here."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence, TypeVar

import numpy as np

from build_engines.spec import ServingConfig
from perf.measure import analyzer
from perf.errors import SlaUnmet
from perf.measure.frontier import Score, Sla, frontier, probe, score
from perf.measure.results import Interval, ReplicatesRecord, save
from perf.measure.sweeps import load_candidate

T = TypeVar("T")


def interval(values: Sequence[float], level: float = 0.95, draws: int = 2000) -> Interval:
    """Median of the replicates and a percentile-bootstrap interval of that median."""
    v = np.asarray(values, dtype=float)
    meds = np.median(np.random.default_rng(0).choice(v, size=(draws, len(v))), axis=1)
    lo, hi = np.quantile(meds, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(np.median(v)), float(lo), float(hi), len(v))


def schedule(labels: list[str], rounds: int) -> list[list[str]]:
    """The order of each round: A B C, then C B A, then A B C, ... Over each pair of rounds every config
    sits at the same mean position, so a drift that is linear in time weighs on each alike (in turn but
    always A first, A would always see the start of the round and C its end)."""
    return [labels if r % 2 == 0 else labels[::-1] for r in range(rounds)]


def in_turn(http_url: str, repository: Path, configs: dict[str, tuple[str, ServingConfig]], rounds: int,
            measure: Callable[[str, str], T], said: Callable[[int, dict[str, list[T]]], None]) -> dict[str, list[T]]:
    """``measure(label, model)`` of each config once per round, in turn (``schedule``), each config
    (re)loaded through http_url before it is measured, even where it was the last one measured, so no
    config gets warm measurements the others do not; ``said(round, results so far)`` after each round."""
    out: dict[str, list[T]] = {label: [] for label in configs}
    for r, order in enumerate(schedule(list(configs), rounds)):
        for label in order:
            model, serving = configs[label]
            load_candidate(http_url, repository, model, serving)
            out[label].append(measure(label, model))
        said(r, out)
    return out


def interleaved(http_url: str, grpc_url: str, repository: Path, configs: dict[str, tuple[str, ServingConfig]],
                load: float | dict[str, float], settings: analyzer.PerfSettings, rounds: int = 5,
                progress: Callable[[str], None] = print) -> dict[str, list[float]]:
    """Throughput of each (model, serving) config at one concurrency (one for all, or one per label),
    ``rounds`` times, in turn; each config is loaded through http_url before it is measured."""
    url = grpc_url if settings.protocol == "grpc" else http_url

    def one(label: str, model: str) -> float:
        at = load[label] if isinstance(load, dict) else load
        return analyzer.measure(url, model, "concurrency", at, settings).throughput_infer_per_s
    return in_turn(http_url, repository, configs, rounds, one, lambda r, out: progress(
        f"  round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in out.items())))


def interleaved_at_sla(http_url: str, grpc_url: str, repository: Path, configs: dict[str, tuple[str, ServingConfig]],
                       start: dict[str, float], settings: analyzer.PerfSettings, sla: Sla, rounds: int = 3,
                       refine: float = 1.5, progress: Callable[[str], None] = print,
                       max_concurrency: int = 64) -> dict[str, list[Score]]:
    """Each config's score at the SLA, once per round, in turn: a frontier search (perf.measure.frontier)
    from the concurrency where it met the SLA before, never above twice the field's highest such
    concurrency (and never above ``max_concurrency``). At a fixed concurrency a config near its edge
    is credited with throughput it served while missing the SLA (bench-tuner: the grid's "best" ran at
    p99 11-16 ms in all five rounds).
    A score that does not meet the SLA: a round in which the config met it at no load, not even 1.
    The rounds alternate direction (``schedule``). Each measurement follows a fresh load, even where the
    config was the last one measured, so no config gets warm measurements the others do not."""
    cap = int(min(max_concurrency, 2 * max(start.values())))
    url = grpc_url if settings.protocol == "grpc" else http_url

    def one(label: str, model: str) -> Score:
        lost: list[float] = []
        pts, _ = frontier(probe(url, model, settings), sla, start=int(start[label]), cap=cap, refine=refine,
                          unmeasured=lost)
        return score(pts, sla, lost)
    return in_turn(http_url, repository, configs, rounds, one, lambda r, out: progress(
        f"  round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1].text(sla.percentile)}" for k, v in out.items())))


def capacities(scores: dict[str, list[Score]]) -> dict[str, list[float]]:
    """Inferences/s at the SLA by label (interpolated, see frontier.score), 0 where a round met the SLA at no load."""
    return {k: [s.capacity for s in v] for k, v in scores.items()}


def ratio(throughput: dict[str, list[float]], num: str, den: str) -> Interval:
    """num / den within each round; a round in which den served nothing within the SLA is left out (a
    round num won outright: the ratio errs against num). No round left: SlaUnmet."""
    kept = [a / b for a, b in zip(throughput[num], throughput[den]) if b > 0]
    if not kept:
        raise SlaUnmet(f"{den} met the SLA at no load in any of the {len(throughput[den])} rounds: no {num}/{den} ratio; "
                       "relax the SLA or measure again")
    return interval(kept)


def headline_replicates(srv, repository: Path, spec, run_id: str, settings: analyzer.PerfSettings, load: float = 16,
                        rounds: int = 5, variants: Sequence[str] = ("fp32", "int8"), results_dir: Path | None = None,
                        progress: Callable[[str], None] = print) -> Path:
    """`make perf`'s ratios: dynamic batching on/off per variant, and INT8/FP32 with batching on and off."""
    configs = {f"{v} {'dynamic batching' if b else 'no batching'}":
               (f"{spec.name}_{v}", ServingConfig.from_spec(spec, dynamic_batching=b))
               for v in variants for b in (True, False)}
    thr = interleaved(srv.http_url, srv.grpc_url, repository, configs, load, settings, rounds, progress)
    ratios = {f"dynamic batching gain, {v}": ratio(thr, f"{v} dynamic batching", f"{v} no batching") for v in variants}
    for v in variants[1:]:
        for b in ("dynamic batching", "no batching"):
            ratios[f"served {v.upper()}/{variants[0].upper()}, {b}"] = ratio(thr, f"{v} {b}", f"{variants[0]} {b}")
    rec = ReplicatesRecord(model=spec.name, run_id=run_id, mode="concurrency", load=load,
                           window_ms=settings.measurement_interval_ms,
                           inputs=Path(settings.input_data).name if settings.input_data else "random data",
                           throughput=thr, ratios=ratios)
    return save(rec, results_dir, name=f"{spec.name}-{run_id}")
