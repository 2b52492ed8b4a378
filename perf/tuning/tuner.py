"""Config tuner under a latency SLA, against the real server (explicit model control, no restarts).

Not a grid: four stages, each pruned by what was already measured, and a final round.
  1. precision   every variant with batching off and one instance (this is also the baseline), their
                 repeats in turn (A B, B A); FP32 unless another's repeats hold 2 % more in the mean
                 (precision_pick).
  2. instances   1, 2, ... up to the cores, batching off, stopping at the first that gains < 5 %.
  3. batching    on the winning variant and instance count. "No dynamic batching" stays the
                 incumbent until something beats it. First batches that leave at once (no preferred
                 size, no delay); its capacity is the arrival rate for a queueing estimate: for "none"
                 and each preferred size (the saturation batch, the spec's), the time to gather the
                 batch at that rate, (b - 1) / rate (b: max_batch_size for "none", else the smallest
                 preferred size: Triton sends a batch as soon as a preferred size can be formed), and
                 the two queue delays (<= SLA/4) that bracket it are measured; the better meets the
                 incumbent. max_batch_size comes from the in-process saturation batch (where a fitted
                 per-call overhead + per-sample cost model reaches 90 % of its samples/s asymptote);
                 batches that leave at once are also measured at the spec's max_batch_size, which is
                 kept for the rest of stage 3 and the variant stage only where it holds 5 % more.
  3b. variant    the other variants on the winning serving config (stage 1 compared them unbatched);
                 not where that config is stage 1's, nor for a variant that missed the SLA there.
  4. final round the stage winner, its own family's best other queue delay, the best config of
                 another family (all but the delay alike), its best batched config at the other
                 max_batch_size (rival_cap), each other variant's best on its instance
                 count (rival_variants) and the simplest config of its variant and instance count, each
                 if its held capacity was within 25 % of the winner's, head to head: A B C D, D C B A,
                 A B C D, each round scored at the SLA (the same search, from its own SLA concurrency).
                 From the simplest (fewer instances, no batching, a shorter delay, fewer
                 preferred sizes, FP32), a more complex config is picked only where it holds more in
                 every round and FINAL_GAIN (2 %) more in the mean: head to head a drift mostly cancels
                 (in 3 rounds of 4 configs their mean places are 6 to 7 of 12, not 1 to 4), so the
                 stages' 5 % bar would keep a real 5-8 % gain out half the time, and a close call goes
                 to the simplest config of the field (two runs agree by it only where their fields do).
Each candidate is ranked by the capacity at the SLA it holds (``frontier.score``: the throughput where
its latency percentile reaches the SLA, interpolated between the last load that met it and the next
that missed; ``held``: the lowest of the search's and of REPEATS re-measurements of its operating load)
and priced at the best measured load that met it in that measurement. The loads come from ``frontier``: a
search that starts at the incumbent's SLA concurrency (the first config at 1) and aims each next
load by Little's law (past saturation latency grows in proportion to concurrency) until it brackets
the SLA. A load at which the config's queue policy (opt-in: [serving] queue_timeout_ms /
max_queue_size) rejects requests counts as a miss: shed requests are never counted as served, so
neither the score nor the cost built on it includes them (recorded as ``shed_at``).
Stage decisions rest on one search of each config and its back-to-back repeats; the final round settles
the close calls across families and queue delays head to head (`make bench-tuner` showed one noisy run pruning the branch that held the grid's best).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, ClassVar, NamedTuple, Sequence

import numpy as np

from build_engines.records import Record
from build_engines.repository import ServingConfig, config_text, parse_config
from build_engines.spec import ModelSpec
from perf.measure import analyzer
from perf.errors import PerfAnalyzerError, Shed, SlaUnmet
from perf.measure.results import Interval
from perf.measure.frontier import AIM, Score, Sla, frontier, probe, score
from perf.measure.sweeps import candidate_config, load_candidate

# a change must beat the incumbent (the simpler config: batching off, then batches that leave at once, ...) by 5 %
# to replace it: above the median between-run swing of one config's held capacity (records/bench-peer-*.json:
# between_runs), not above its worst, so two runs can still pick differently (the digits record's two picks)
GAIN = 1.05
INSTANCE_GAIN = 1.05
BAND = 0.75           # the final round re-measures a config within 25 % of the stage winner's one measurement:
                      # one config's capacity moved 4950-6905/s over 9 judge rounds of `make bench-tuner
                      # MODEL=digits` (2026-11-26, the run committed as 31ed3a6's record)
SATURATION = 0.9       # in-process batch where samples/s reaches 90 % of its asymptote
DELAYS_US = (0, 100, 250, 500, 1000, 2000, 5000, 10000)
# A B, B A, A B (replicates.interleaved_at_sla): a more complex config must hold more in every round (final_pick).
# Of two alike configs, a challenger does so in 2 rounds one time in 4, in 3 one time in 8: the digits bench-peer
# recorded at 3d9a129 picked "preferred 4, 250 us" in one run by 2 rounds over configs the judges put it 16 % below.
# An odd count leaves a linear drift a little in the means (of 4 configs, mean places 6 to 7 of 12), which the
# every-round rule does not depend on.
FINAL_ROUNDS = 3
# the final round's bar. Two runs of the digits bench-peer (records/bench-peer-digits.json as committed at 2b19212) ended in
# one family, at delay 0 and at 2000 us: the batching stage's 5 % bar, on searches measured minutes apart, let
# 2000 us in in one run and not in the other, while the judge put it 6-9 % above delay 0 in both designs
# (lower ends 1.04); the final round never compared them (it took other families only). Head to head, a drift
# cancels and the bar only has to clear the round-to-round noise of a mean of two (within a round, the two runs'
# picks' ratio moved 1.04-1.12 over 8 judge rounds)
FINAL_GAIN = 1.02
REPEATS = 2           # each config's operating load measured twice more; ranked by the lowest of the 3 capacities
# what happened to the final round (TuneRecord.final_round), and what the campaign's row says of it
FINAL_STATES = {"ran": f"the stage winner, its best other queue delay, the best of another family and the simplest within "
                       f"{(1 - BAND) * 100:.0f} % of it, {FINAL_ROUNDS} rounds in turn",
                "none within band": f"not run: no other config within {(1 - BAND) * 100:.0f} % of the stage winner",
                "undecided": "not decided (a measurement failed): the stage winner stands",
                "off": "not run (turned off)"}


@dataclass(frozen=True)
class Candidate:
    variant: str
    serving: ServingConfig

    def label(self) -> str:
        s = self.serving
        if not s.dynamic_batching:
            b = "no batching"
        else:
            pref = ",".join(map(str, s.preferred_batch_sizes)) or "none"
            b = f"batching mbs {s.max_batch_size} pref {pref} delay {s.max_queue_delay_us}us"
        return f"{self.variant}, {b}, {s.instances}x{s.threads_per_instance}t"


@dataclass
class Measured:
    candidate: Candidate
    stage: str
    throughput: float           # inferences/s at the best measured load within the SLA (0 = never met)
    concurrency: float | None
    latency_ms: float | None    # the SLA percentile at that point
    capacity: float             # inferences/s where the percentile reaches the SLA (frontier.score): the ranking
    points: list[analyzer.PerfPoint]
    runs: int
    shed_at: float | None = None   # the concurrency at which its queue policy rejected requests (never scored)
    # capacity at the SLA of the frontier search, then of each re-measurement of its operating load
    # (Tuner.repeats); ``capacity`` is the lowest of them (HELD): what the config holds, not its best
    capacities: list[float] = field(default_factory=list)

    @property
    def meets_sla(self) -> bool:
        return self.throughput > 0

    @property
    def label(self) -> str:
        return self.candidate.label()

    @property
    def variant(self) -> str:
        return self.candidate.variant

    @property
    def serving(self) -> ServingConfig:
        return self.candidate.serving


@dataclass
class _Search:
    """One config's frontier search and its repeats so far (Tuner.measure / measure_in_turn)."""

    candidate: Candidate
    at: Callable[[int], analyzer.PerfPoint | None]
    points: list[analyzer.PerfPoint]
    runs: int
    lost: list[float]               # loads that could not be measured (never interpolated past)
    shed_at: float | None
    scores: list[Score]             # the search's, then one per repeat


@dataclass
class Verified:
    """The tuned config against the baseline, head to head: in turn for several rounds, each at the
    concurrency where it met the SLA; the ratio of throughputs (= the ratio of cost per request on one
    machine) as the median of the rounds with its interval."""

    rounds: int
    baseline_rps: list[float]          # capacity at the SLA (frontier.score) in each round
    tuned_rps: list[float]
    tuned_over_baseline: Interval


@dataclass
class CacheStep:
    """Triton's response cache on the winner (campaigns): the winner measured with every request a hit,
    its throughput against the winner's without the cache, and Triton's own count of hits and misses."""

    all_hit: Measured
    all_hit_rps: float
    no_cache_rps: float
    server_hits: int | None
    server_misses: int | None


@dataclass(kw_only=True)
class TuneRecord(Record):
    """What one tuning run measured and picked (results/tune-*.json)."""

    KIND: ClassVar[str] = "tune"
    SCHEMA: ClassVar[int] = 8          # 5: final_round, fitted saturation batch; 6: two families, A B / B A;
                                       # 7: aimed queue delays, the "variant" stage; 8: capacity held over repeats
    WRITER: ClassVar[str] = "make tune"
    model: str
    instance: str = ""                 # the machine kind the throughputs belong to
    run_id: str = ""
    machine_note: str = ""
    sla_ms: float
    percentile: str
    winner: Measured
    stage_winners: dict[str, Measured]
    candidates: list[Measured]
    perf_analyzer_runs: int
    candidates_measured: int
    saturation: dict
    notes: list[str]
    seconds: float
    cache: CacheStep | None = None     # the response-cache step (campaigns)
    server_url: str = ""
    server_memory_gib: float | None = None   # the server and its stubs after the loads (campaigns)
    verified: Verified | None = None         # the winner vs the baseline, interleaved (campaigns)
    priced_why: str = ""
    final_round: str = ""                    # one of FINAL_STATES (see Tuner.final_round)

    def stage(self, name: str) -> list[Measured]:
        return [c for c in self.candidates if c.stage == name]


@dataclass
class TunerSide:
    """`make bench-tuner`: the tuner's run."""

    runs: int                  # perf_analyzer runs
    candidates: int            # configs measured
    winner: str                # its pick (label)
    throughput: float
    capacity: float
    seconds: float             # its measuring time
    final_round: str = ""      # FINAL_STATES ("": a record from before the final round was recorded)


@dataclass
class GridSide:
    """`make bench-tuner`: every config the tuner can pick, each measured as a brute search does."""

    runs: int
    candidates: int
    seconds: float
    top: list[str]             # its best three that met the SLA (labels)
    all: list[Measured]


@dataclass
class HeadToHeadRow:
    """One contender of the head to head, every round."""

    label: str
    start: float | None        # the concurrency its frontier search started from
    capacity: list[float]      # at the SLA, per round
    throughput: list[float]
    concurrency: list[float]
    latency_ms: list[float]


@dataclass(kw_only=True)
class BenchTunerRecord(Record):
    """`make bench-tuner`: the tuner's pick against the full grid, on one server."""

    KIND: ClassVar[str] = "bench-tuner"
    SCHEMA: ClassVar[int] = 4          # 4: head to head scored by capacity at the SLA; the grid is the tuner's whole space
    WRITER: ClassVar[str] = "make bench-tuner"
    model: str
    sla_ms: float
    percentile: str = "p99"
    tuner: TunerSide
    grid: GridSide
    head_to_head: dict[str, HeadToHeadRow]    # contender ("pick", "grid #1", ...) -> every round
    best: str                     # the grid contender (other than the pick) with the highest median head to head
    quality: Interval             # pick / that contender (capacity at the SLA), per round: median, 95 % interval
    measured_share: float         # the tuner's measuring time over the grid's
    command: str


def saturation_batch(onnx_path: Path, spec: ModelSpec, max_batch: int, threads: int = 1, passes: int = 3,
                     budget_s: float = 0.1) -> dict:
    """The batch size past which batching stops paying in-process: the power of two nearest the batch whose
    samples/s reaches 90 % of the asymptote of a per-call-overhead model, t(b) = overhead + b x per_sample
    (it gets there at b = 9 x overhead / per_sample), fitted (relative least squares) to the median time
    of each batch size over ``passes`` interleaved passes. On digits (a shared 2-core Xeon, five runs each) a threshold
    on one raw curve gave 4 / 32 / 8 / 16 / 16 (the curve is flat past a few samples); 9 x overhead /
    per_sample gave 7.1-8.0, so 8 every time."""
    from build_engines.data import typical_feed
    from build_engines.runtime import ort_session
    batches = spec.evaluation_batches()
    sizes = [2 ** k for k in range(max_batch.bit_length())]       # powers of two up to max_batch
    return saturation_of(ort_session(onnx_path, threads=threads), {b: typical_feed(spec, batches, b) for b in sizes},
                         passes, budget_s)


def saturation_of(sess, feeds: dict[int, dict[str, np.ndarray]], passes: int = 3, budget_s: float = 0.1) -> dict:
    """saturation_batch on a session and one feed per batch size (powers of two)."""
    from build_engines.runtime import time_session
    sizes = sorted(feeds)
    ms: dict[int, list[float]] = {b: [] for b in sizes}
    for _ in range(passes):                              # interleaved: a slow spell hits every size alike
        for b in sizes:
            ms[b].append(time_session(sess, feeds[b], min_runs=5, budget_s=budget_s)["p50_ms"])
    t = np.array([np.median(ms[b]) for b in sizes])
    x = np.array(sizes, dtype=float)
    overhead, per_sample = (np.linalg.lstsq(np.stack([1 / t, x / t], axis=1), np.ones_like(t), rcond=None)[0]
                            if len(sizes) > 1 else (float("nan"), float("nan")))   # rows / t: relative error
    if len(sizes) < 2 or per_sample <= 0:                # one size, or time does not grow with the batch
        sat = sizes[-1]
    else:
        need = SATURATION / (1 - SATURATION) * max(overhead, 1e-9) / per_sample
        sat = min(sizes, key=lambda b: abs(np.log2(b / need)))     # the nearest power of two
    return {"samples_per_s_by_batch": {str(b): b / (v / 1e3) for b, v in zip(sizes, t)},
            "overhead_us": float(overhead * 1e3), "per_sample_us": float(per_sample * 1e3),
            "passes": passes, "saturation_batch": sat}


@dataclass
class Tuner:
    http_url: str
    grpc_url: str
    repository: Path
    spec: ModelSpec
    sla_ms: float
    percentile: str = "p99"
    variants: Sequence[str] = ("fp32", "int8")
    settings: analyzer.PerfSettings = field(default_factory=lambda: analyzer.PerfSettings(measurement_interval_ms=1000))
    max_concurrency: int = 64
    max_instances: int = field(default_factory=lambda: os.cpu_count() or 1)
    progress: Callable[[str], None] = print
    final_rounds: bool = True          # step 4: the stage winner and one challenger head to head
    repeats: int = REPEATS             # re-measurements of each config's operating load (see held)
    predict: bool = True               # frontier steps aimed by Little's law (False: doubling, as a brute grid does)
    measured: list[Measured] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    winner: Measured | None = None
    final_state: str = field(default="", init=False)     # FINAL_STATES
    saturations: dict[str, dict] = field(default_factory=dict, init=False)   # variant -> saturation_batch's result

    def __post_init__(self) -> None:
        self.sla = Sla(self.sla_ms, self.percentile)     # BadSettings for a bad SLA or percentile

    def model(self, variant: str) -> str:
        return f"{self.spec.name}_{variant}"

    def measure(self, cand: Candidate, stage: str, start: float | None = 1) -> Measured:
        """One config's SLA frontier (see frontier), its ladder starting at ``start`` (the incumbent's SLA
        concurrency saves the low loads that never decide a score), then its repeats. Never measures a
        config twice."""
        for m in self.measured:
            if m.candidate == cand:
                return m
        s = self._search(cand, start)
        for _ in range(self.repeats):
            self._again(s)
        return self._measured(s, stage)

    def measure_in_turn(self, cands: Sequence[Candidate], stage: str) -> list[Measured]:
        """Each config's search (the first from concurrency 1, the others from where the first met the
        SLA), then their repeats in turn, forward then backward (A B, B A): a linear drift falls on each
        config's repeats alike, which it does not where each config's repeats follow its own search (see
        precision_pick). Unlike ``measure``, measures every config given (the first stage's)."""
        searches: list[_Search] = []
        for c in cands:
            searches.append(self._search(c, start=(searches[0].scores[0].concurrency or 1) if searches else 1))
        for r in range(self.repeats):
            for s in (searches if r % 2 == 0 else searches[::-1]):
                self._again(s)
        return [self._measured(s, stage) for s in searches]

    def _search(self, cand: Candidate, start: float | None) -> _Search:
        """Load ``cand`` and search its SLA frontier; the result holds what its repeats need."""
        load_candidate(self.http_url, self.repository, self.model(cand.variant), cand.serving)
        url = self.grpc_url if self.settings.protocol == "grpc" else self.http_url
        shed: list[float] = []

        def missed(c: int, e: PerfAnalyzerError) -> None:
            if isinstance(e, Shed):                     # rejections are not throughput: scored on the loads below
                shed.append(float(c))
                self.notes.append(f"{cand.label()}: c={c}: requests shed by the queue policy; scored on the loads below")
            else:                                       # unstable or timed out: counts as a miss
                self.notes.append(f"{cand.label()}: c={c}: {str(e).splitlines()[0]}")

        at = probe(url, self.model(cand.variant), self.settings, missed, catch=(PerfAnalyzerError,))
        lost: list[float] = []
        points, runs = frontier(at, self.sla, start=int(start or 1), cap=self.max_concurrency, predict=self.predict,
                                unmeasured=lost)
        shed_at = min(shed) if shed else None
        points = [p for p in points if shed_at is None or p.load < shed_at]
        return _Search(cand, at, points, runs, lost, shed_at, [score(points, self.sla, lost)])

    def _again(self, s: _Search) -> None:
        """Does it hold? One more measurement of its operating load (none where the search met no load)."""
        if s.scores[0].meets_sla:
            again, n = self._repeat(s.at, s.points, s.scores[0], s.lost)
            s.scores.append(again)
            s.runs += n

    def _measured(self, s: _Search, stage: str) -> Measured:
        sc = held(s.scores)
        m = Measured(s.candidate, stage, sc.throughput, sc.concurrency, sc.latency_ms, sc.capacity, s.points, s.runs,
                     s.shed_at, capacities=[x.capacity for x in s.scores])
        spread = f", held {sc.capacity:.0f} of {'/'.join(f'{x.capacity:.0f}' for x in s.scores)}" \
            if len(s.scores) > 1 else ""
        self.progress(f"  [{stage}] {s.candidate.label()}: {sc.text(self.percentile)}{spread} ({s.runs} runs)")
        self.measured.append(m)
        return m

    def _repeat(self, at: Callable[[int], analyzer.PerfPoint | None], points: list[analyzer.PerfPoint], first: Score,
                lost: list[float]) -> tuple[Score, int]:
        """One re-measurement of the load ``first`` settled at, scored with the others (``rescored``). Where
        it misses and no lower load was measured (a warm start met the SLA at its first load), the loads
        below are searched (``frontier`` capped under it): a miss there is not a config that holds nothing."""
        c = int(first.concurrency)
        again = at(c)
        s = rescored(points, again, c, self.sla, lost)
        if s.meets_sla or c <= 1:
            return s, 1
        below, n = frontier(at, self.sla, start=max(1, math.floor(c * AIM)), cap=c - 1, predict=self.predict)
        return rescored(list(points) + below, again, c, self.sla, lost), 1 + n

    def better(self, new: Measured, inc: Measured, gain: float = GAIN) -> bool:
        """Does ``new`` beat the incumbent (held capacity at the SLA, by ``gain``)? Close calls across
        families are settled by the final round, which measures the winner and one challenger head to head."""
        return new.capacity > inc.capacity * gain

    def best(self, ms: Sequence[Measured], gain: float = 1.0) -> Measured:
        """The first of ``ms`` unless a later one beats the best so far by ``gain``."""
        inc = ms[0]
        for m in ms[1:]:
            if self.better(m, inc, gain=gain):
                inc = m
        return inc

    def run(self, instance: str = "") -> TuneRecord:
        t0 = time.perf_counter()
        spec = self.spec
        base = ServingConfig.from_spec(spec, dynamic_batching=False, instances=1, threads_per_instance=1,
                                       response_cache=False)
        self.progress(f"tuning {spec.name} for {self.percentile} <= {self.sla_ms:g} ms")
        # 1. precision: each variant unbatched on one instance, their repeats in turn (A B, B A)
        stage1 = self.measure_in_turn([Candidate(v, base) for v in self.variants], "precision")
        if not any(m.meets_sla for m in stage1):
            firsts = [getattr(m.points[0], f"{self.percentile}_us") / 1e3 for m in stage1
                      if m.points and m.points[0].load == 1]
            best = f"best {min(firsts):.2f} ms" if firsts else "no measurement succeeded"
            raise SlaUnmet(f"no variant meets {self.percentile} <= {self.sla_ms:g} ms even at concurrency 1 "
                           f"({best}); relax the SLA")
        # the saturation batch, max_batch_size, preferred sizes and queue delays of every later stage follow
        # the variant picked here; stage 3b tries the others on the winning serving config only
        inc = precision_pick(stage1)
        self.notes.append("precision (means of the repeats, in turn): " + ", ".join(
            f"{m.variant} {np.mean(repeated(m)):.0f}/s" for m in stage1) + f"; picked {inc.variant}")
        variant = inc.candidate.variant
        chain = {"precision": inc}
        # 2. instances, before batching: their gain is large and clear without a batcher (bench-tuner,
        # digits: 1.8x), and one noisy measurement of a batching config on 2 instances (a p99 spike at
        # the warm start) once kept the tuner on 1 instance, where none of the grid's best were
        for n in range(2, self.max_instances + 1):
            m = self.measure(Candidate(variant, replace(inc.candidate.serving, instances=n)), "instances", inc.concurrency)
            if self.better(m, inc, INSTANCE_GAIN):
                inc = m
            else:
                break
        chain["instances"] = inc
        # 3. batching on those instances, pruned by the saturation batch and the SLA's room for queueing
        sat = self.saturation(variant)
        mbs = max_batch_for(spec, sat["saturation_batch"])
        delays = queue_delays(self.sla_ms)
        self.notes.append(f"saturation batch {sat['saturation_batch']} -> max_batch_size {mbs}; "
                          f"queue delays within SLA/4: {delays}")
        batching = replace(inc.candidate.serving, dynamic_batching=True, max_batch_size=mbs, preferred_batch_sizes=(),
                           max_queue_delay_us=0)
        m = self.measure(Candidate(variant, batching), "batching", inc.concurrency)   # each batch leaves at once
        # batches that leave at once at the spec's max_batch_size too: the saturation batch is one process's,
        # while at the SLA's load on several instances the queue outgrows it (`make bench-peer MODEL=digits`
        # recorded at b047c22: Model Analyzer's pick differed from both of ours only in max_batch_size, 64 to
        # our 8, and the 2 s judge put it above ours in 5 of 6 rounds). The larger cap is kept, for every later
        # stage, only where it holds GAIN more (kept_cap): a cap the queue never reaches changes nothing.
        if spec.serving.max_batch_size > mbs:
            wide = self.measure(Candidate(variant, replace(batching, max_batch_size=spec.serving.max_batch_size)),
                                "batching", inc.concurrency)
            kept = kept_cap(m, wide, inc)
            self.notes.append(f"batches leaving at once: max_batch_size {mbs} {m.capacity:.0f}/s, "
                              f"{wide.serving.max_batch_size} {wide.capacity:.0f}/s; kept {kept.serving.max_batch_size}")
            m, batching, mbs = kept, kept.serving, kept.serving.max_batch_size
        if self.better(m, inc):
            inc = m
        # For "none" and each preferred size, the two queue delays that bracket the time it takes to gather
        # the batch at the rate just measured with batching on (a queueing estimate: (b - 1) / rate; the
        # incumbent's rate where batches that leave at once met the SLA at no load); the better of the two
        # meets the incumbent. (Walking down from SLA/4 measured 3-4 delays per size and took 10 of the
        # tuner's 13 configs in the bench-tuner digits run recorded at 4d9e8e3; the grid's best five sat at
        # 1000-2000 us, where 7 / 5000 per s = 1.4 ms points.)
        rate = m.capacity or inc.capacity
        rate_from = "batches leaving at once" if m.capacity else "the incumbent (batches leaving at once missed the SLA)"
        for pref in [()] + preferred_candidates(spec, sat["saturation_batch"], mbs):
            gather = min(pref) if pref else mbs    # a preferred size leaves as soon as it can be formed
            ds = aimed_delays(gather, rate, self.sla_ms)
            self.notes.append(f"preferred {','.join(map(str, pref)) or 'none'}: gathering {gather} at {rate:.0f}/s "
                              f"({rate_from}) takes ~{gather_us(gather, rate):.0f} us -> delays {ds} us")
            tried = [self.measure(Candidate(variant, replace(batching, preferred_batch_sizes=pref, max_queue_delay_us=d)),
                                  "batching", inc.concurrency) for d in ds]
            pref_best = self.best(tried)
            if self.better(pref_best, inc):
                inc = pref_best
        chain["batching"] = inc
        # 3b. the other variants on the winning serving config: stage 1 compared them without batching, on
        # one instance, by one measurement each (the bench-tuner digits run recorded at 4d9e8e3: INT8 2685/s
        # vs FP32 2524/s kept INT8 for every later stage, while the grid's best five configs were FP32).
        # Not where the winner is stage 1's config (compared there), nor for a variant that missed the SLA
        # at concurrency 1 there (batching adds queueing, never removes it).
        others = [] if inc.serving == base else [m for m in stage1 if m.variant != inc.variant]
        for first in others:
            if not first.meets_sla:
                self.notes.append(f"variant stage: {first.variant} missed the SLA unbatched at concurrency 1: "
                                  "not measured on the winning config")
                continue
            m = self.measure(Candidate(first.variant, self._batching_for(first.variant, inc.serving, sat)), "variant",
                             inc.concurrency)
            if self.better(m, inc):
                inc = m
        if any(m.stage == "variant" for m in self.measured):
            chain["variant"] = inc
        # 4. the stage winner and one challenger head to head: one measurement each decided the stages
        # above, and a noisy one can prune the branch that holds the best config (bench-tuner: the
        # grid's best had 2 instances)
        inc = self.final_round(inc)
        chain["final"] = inc
        self.winner = inc
        return TuneRecord(model=spec.name, instance=instance, sla_ms=self.sla_ms, percentile=self.percentile,
                          winner=inc, stage_winners=chain, candidates=list(self.measured),
                          perf_analyzer_runs=sum(m.runs for m in self.measured), candidates_measured=len(self.measured),
                          saturation=sat | {"by_variant": {v: d["saturation_batch"] for v, d in self.saturations.items()}},
                          notes=self.notes, seconds=time.perf_counter() - t0,
                          final_round=self.final_state)

    def final_round(self, inc: Measured, top: int = 2, rounds: int = FINAL_ROUNDS) -> Measured:
        """The incumbent and its ``challengers`` (its own family's best other queue delay, the best of
        ``top - 1`` other families, its best batched config at another cap, each other variant's best and the
        simplest config of its variant and instance count), each within BAND of it, in turn for ``rounds``
        rounds, each round scored at the SLA (replicates.interleaved_at_sla); the pick walks the field from
        the simplest (see simpler) and moves to a more complex config only where it holds more in every
        round and FINAL_GAIN more in the mean (final_pick). None within BAND: no final round.
        ``final_state`` says which happened.
        A family is everything but the queue delay. Other families are there because the runner-up by one
        measurement is most often the winner's own neighbour delay (`make bench-tuner MODEL=digits` at
        ca94ba3, see 31ed3a6's message: the pick "no preferred size, 1000 us" measured 7649/s once, 18 %
        above its 500 us neighbour; 9 rounds head to head then put it 9 % below "preferred 8, 1000 us",
        which the stages had measured at 5580/s); the own family's other delay because the stages choose
        the delay by a 5 % bar on searches minutes apart (see FINAL_GAIN); the anchor because two runs of
        the signals bench-peer recorded at 50d6da6 picked two batching configs
        2-3 % apart and within 3 % of Model Analyzer's "no delay" pick: which one a run kept was decided
        by which one its noisy stages happened to crown, so a close call now goes to the simplest of the
        field. Two runs agree by it only where their fields do: the anchor is most often the unbatched
        config, and the other entries follow each run's own stage winner."""
        from perf.measure import replicates
        others = challengers(self.measured, inc, top)
        if not self.final_rounds:
            self.final_state = "off"
            return inc
        if not others:
            self.final_state = "none within band"
            self.notes.append(f"final round {FINAL_STATES[self.final_state]}")
            return inc
        field_ = {"incumbent": inc} | {f"#{i + 1}": m for i, m in enumerate(others)}
        self.progress(f"final round: {len(field_)} configs head to head, {rounds} rounds in turn")
        try:
            cap = replicates.capacities(self._head_to_head(field_, rounds))
        except PerfAnalyzerError as e:           # unstable or shed: the stage winner stands
            self.final_state = "undecided"
            self.notes.append(f"final round not decided ({str(e).splitlines()[0]}): the stage winner stands")
            return inc
        self.final_state = "ran"
        best = final_pick(cap, {k: simpler(m, self.variants) for k, m in field_.items()})
        means = ", ".join(f"{field_[k].label} {np.mean(v):.0f}/s" for k, v in cap.items())
        self.notes.append(f"final round (means of {rounds}): {means}; picked {field_[best].label}")
        return field_[best]

    def _head_to_head(self, field_: dict[str, Measured], rounds: int, refine: float = 1.5):
        from perf.measure import replicates
        return replicates.interleaved_at_sla(
            self.http_url, self.grpc_url, self.repository, {k: (self.model(m.variant), m.serving) for k, m in field_.items()},
            {k: m.concurrency for k, m in field_.items()}, self.settings, self.sla, rounds, refine, self.progress,
            self.max_concurrency)

    def verify(self, rounds: int = 5) -> Verified | None:
        """Baseline (the precision stage's FP32) and the winner, in turn, each round scored at the SLA."""
        from perf.measure import replicates
        base = next((m for m in self.measured if m.stage == "precision" and m.variant == "fp32" and m.meets_sla), None)
        win = self.winner
        if base is None:
            why = "no FP32 baseline met the SLA"
        elif win is None or not win.meets_sla:
            why = "no winner met the SLA"
        elif base.candidate == win.candidate:
            why = "the winner is the baseline"
        else:
            why = ""
        if why:
            self.notes.append(f"verification not measured: {why}")
            return None
        self.progress(f"verifying: baseline and tuned in turn, {rounds} rounds")
        try:
            cap = replicates.capacities(self._head_to_head({"baseline": base, "tuned": win}, rounds))
            ratio = replicates.ratio(cap, "tuned", "baseline")
        except (PerfAnalyzerError, SlaUnmet) as e:   # the report then says there is no head-to-head verification
            self.notes.append(f"verification not measured ({str(e).splitlines()[0]})")
            return None
        return Verified(rounds, cap["baseline"], cap["tuned"], ratio)

    def _batching_for(self, variant: str, serving: ServingConfig, sat: dict) -> ServingConfig:
        """The winning serving config for another variant: max_batch_size (and a preferred size that was the
        winner's saturation batch) from that variant's own saturation batch, unless the batching stage kept
        the spec's max_batch_size by measurement (then that cap stays). Its batched cost per sample is
        its own (on an AMX Xeon INT8 took 20.8 us a sample in a batch, FP32 11.6 us, while unbatched they
        served alike): the INT8 path's max_batch_size 8 cost FP32 20 % there (`make bench-peer MODEL=digits`)."""
        if not serving.dynamic_batching:
            return serving
        own = self.saturation(variant)["saturation_batch"]
        # a cap the batching stage kept by measurement (the spec's, over the derived one) stays: it was not derived
        derived = serving.max_batch_size == max_batch_for(self.spec, sat["saturation_batch"])
        mbs = max_batch_for(self.spec, own) if derived else serving.max_batch_size
        pref = serving.preferred_batch_sizes
        pref = (min(own, mbs),) if pref == (min(sat["saturation_batch"], serving.max_batch_size),) else \
            tuple(b for b in pref if b <= mbs)
        self.notes.append(f"variant stage: {variant}'s saturation batch {own} -> max_batch_size {mbs}, preferred "
                          f"{','.join(map(str, pref)) or 'none'}")
        return replace(serving, max_batch_size=mbs, preferred_batch_sizes=pref)

    def saturation(self, variant: str) -> dict:
        """The variant's in-process saturation batch (``saturation_batch``), measured once per run; the
        spec's max_batch_size where its ONNX file is not in the repository."""
        if variant not in self.saturations:
            onnx = self._onnx_for(variant)
            self.saturations[variant] = saturation_batch(onnx, self.spec, self.spec.serving.max_batch_size) if onnx \
                else {"saturation_batch": self.spec.serving.max_batch_size, "samples_per_s_by_batch": {}}
        return self.saturations[variant]

    def _onnx_for(self, variant: str) -> Path | None:
        f = self.repository / self.model(variant) / "1" / "model.onnx"
        return f if f.exists() else None


def _family(m: Measured) -> tuple:
    """Everything but the queue delay."""
    s = m.serving
    return m.variant, s.instances, s.dynamic_batching, s.max_batch_size, s.preferred_batch_sizes


def challengers(measured: Sequence[Measured], inc: Measured, top: int = 2) -> list[Measured]:
    """Who meets the incumbent in the final round, each once: its own family's best other queue delay
    (rival_delay), the best of ``top - 1`` other families (contenders), its best batched config at another
    max_batch_size (rival_cap), each other variant's best on its instance count (rival_variants) and the
    simplest config of its variant and instance count (anchor)."""
    out: list[Measured] = []
    for m in [rival_delay(measured, inc), *contenders(measured, inc, top - 1), rival_cap(measured, inc),
              *rival_variants(measured, inc), anchor(measured, inc)]:
        if m is not None and m.label != inc.label and all(m.label != o.label for o in out):
            out.append(m)
    return out


def contenders(measured: Sequence[Measured], inc: Measured, n: int) -> list[Measured]:
    """The final round's challengers: the best measured config of each family (all but the queue delay
    alike) other than the incumbent's, within BAND of it, best first, at most ``n``."""
    return best_of_each([m for m in in_band(measured, inc) if _family(m) != _family(inc)], _family)[:n]


def best_of_each(ms: Sequence[Measured], key: Callable[[Measured], object]) -> list[Measured]:
    """The highest-capacity config of each ``key`` among ``ms``, best first."""
    best: dict[object, Measured] = {}
    for m in sorted(ms, key=lambda m: -m.capacity):
        best.setdefault(key(m), m)
    return list(best.values())


def in_band(measured: Sequence[Measured], inc: Measured) -> list[Measured]:
    """The measured configs the final round may take: those that met the SLA, held within BAND of the
    incumbent, and are not the cache stage's (its capacity is the cache's, not the config's)."""
    return [m for m in measured if m.meets_sla and m.stage != "cache" and m.capacity >= BAND * inc.capacity]


class Simplicity(NamedTuple):
    """A config's place in the order a tie goes (``simpler``): compared field by field, smaller first."""

    instances: int
    batching: bool
    queue_delay_us: int          # 0 unbatched: the batcher's fields are not in force
    preferred_sizes: int         # how many
    variant_rank: int            # the variant's place in the tuner's list
    max_batch_size: int          # 0 unbatched


def simpler(m: Measured, variants: Sequence[str] = ("fp32",)) -> Simplicity:
    """The order in which a tie goes (smaller first): fewer instances (memory), no batching, a shorter
    queue delay (what a lone request waits), fewer preferred sizes, the variant listed first (the
    tuner's default lists FP32 first: no quantization error), a smaller max_batch_size."""
    s = m.serving
    rank = list(variants).index(m.variant) if m.variant in variants else len(variants)
    on = s.dynamic_batching
    return Simplicity(s.instances, on, s.max_queue_delay_us if on else 0, len(s.preferred_batch_sizes) if on else 0,
                      rank, s.max_batch_size if on else 0)


def anchor(measured: Sequence[Measured], inc: Measured) -> Measured | None:
    """The simplest measured config (``simpler``) of the incumbent's variant and instance count that met
    the SLA within BAND of it; None where that is the incumbent itself or none is within BAND."""
    same = [m for m in in_band(measured, inc)
            if m.variant == inc.variant and m.serving.instances == inc.serving.instances]
    first = min(same, key=simpler, default=None)
    return None if first is None or first.label == inc.label else first


def precision_pick(stage1: Sequence[Measured], gain: float = FINAL_GAIN) -> Measured:
    """The precision stage's pick: the first variant (FP32 in the default order) unless a later one that met
    the SLA holds ``gain`` more than the pick so far in the mean of its repeats (``repeated``), measured in
    turn with the others' (A B, B A: Tuner.measure_in_turn): a linear drift cancels in the repeated points,
    not in the search points each repeat is still scored against (``rescored``: a stand-in with a 0.5 %
    drift a measurement put two alike variants 0.8 % apart in turn, 4.0 % apart in blocks).
    Not the lowest of each config's measurements by GAIN, as the later stages rank: in the signals
    bench-peer recorded at 3514e94 each variant's repeats followed its own search, run 1 measured FP32
    2803/3121/3176 and then INT8 2684/3475/3838 and kept FP32 by its lowest (2803 vs 2684) while INT8's
    repeats were 16 % higher; run 2 kept INT8 (lowest 3529 vs 3135). Every later stage followed: FP32's
    saturation batch is 1 there, INT8's 4, and the judges put run 2's INT8 pick 1.10x [0.94, 1.24] above
    run 1's FP32 one with 3 s windows, 1.01x [1.00, 1.13] with 2 s. The bar is the final round's, which is
    also head to head."""
    met = [m for m in stage1 if m.meets_sla]     # a variant whose held score missed is never kept by its mean
    inc = met[0] if met else stage1[0]
    for m in met[1:]:
        if np.mean(repeated(m)) > gain * np.mean(repeated(inc)):
            inc = m
    return inc


def repeated(m: Measured) -> list[float]:
    """The capacities of a config's repeats (its search's where it has none: it met the SLA at no load)."""
    return m.capacities[1:] or m.capacities


def final_pick(caps: dict[str, Sequence[float]], order: dict[str, Simplicity], gain: float = FINAL_GAIN) -> str:
    """The final round's pick among its labels, from each one's capacities round by round: walk them from
    the simplest (``order``: the labels' ``simpler`` keys) and move to the next only where it held more in
    every round and ``gain`` more in the mean. A close call therefore goes to the simpler config of the
    field, not to whichever one the noise of this run's stages crowned."""
    labels = sorted(caps, key=lambda k: order[k])
    pick = labels[0]
    for k in labels[1:]:
        every = all(b > a for a, b in zip(caps[pick], caps[k]))
        if every and np.mean(caps[k]) > gain * np.mean(caps[pick]):
            pick = k
    return pick


def rival_variants(measured: Sequence[Measured], inc: Measured) -> list[Measured]:
    """For each other variant, its best measured config on the incumbent's instance count, batched where the
    incumbent is, within BAND of it. The variant is otherwise decided unbatched on one instance (stage 1) and
    by one measurement on the winning config (stage 3b), and the final round's field follows the run's own
    stage winner: in the digits bench-peer recorded at 3d9a129 stage 1 kept FP32 in one run and INT8 in the
    other, so neither run's final round met the other variant's batched configs, and two runs agree by the
    final round only where their fields do (see anchor)."""
    s = inc.serving
    return best_of_each([m for m in in_band(measured, inc) if m.variant != inc.variant and
                         m.serving.instances == s.instances and m.serving.dynamic_batching == s.dynamic_batching],
                        lambda m: m.variant)


def kept_cap(derived: Measured, wide: Measured, inc: Measured, gain: float = GAIN) -> Measured:
    """Which of batches leaving at once at the derived cap and at the spec's wider one the batching stage
    goes on with: the wider where it holds ``gain`` more than the derived, or where only it beats the
    incumbent by ``gain`` (derived 7300/s, wide 7500/s, incumbent 7000/s: batching must not be dropped
    because the simpler cap just missed the bar)."""
    if wide.capacity > derived.capacity * gain:
        return wide
    if derived.capacity <= inc.capacity * gain < wide.capacity:
        return wide
    return derived


def rival_cap(measured: Sequence[Measured], inc: Measured) -> Measured | None:
    """The best batched config of the incumbent's variant and instance count at another max_batch_size,
    within BAND of it: the batching stage keeps the spec's cap over the derived one by one search of each and
    the 5 % bar, while one config's judge rounds swing 10 %. None where the incumbent is unbatched."""
    s = inc.serving
    if not s.dynamic_batching:
        return None
    return max((m for m in in_band(measured, inc) if m.variant == inc.variant and m.serving.instances == s.instances
                and m.serving.dynamic_batching and m.serving.max_batch_size != s.max_batch_size),
               key=lambda m: m.capacity, default=None)


def rival_delay(measured: Sequence[Measured], inc: Measured) -> Measured | None:
    """The best measured config of the incumbent's family (all but the queue delay alike) at another
    queue delay, within BAND of it; None if there is none."""
    same = [m for m in in_band(measured, inc)
            if _family(m) == _family(inc) and m.serving.max_queue_delay_us != inc.serving.max_queue_delay_us]
    return max(same, key=lambda m: m.capacity, default=None)


def rescored(points: Sequence[analyzer.PerfPoint], again: analyzer.PerfPoint | None, load: float, sla: Sla,
             unmeasured: Sequence[float] = ()) -> Score:
    """The score with the point at ``load`` replaced by a re-measurement of it: a repeat that misses the
    SLA there scores on the loads below; one that could not be measured (unstable, shed) too, without
    interpolating past it."""
    rest = [p for p in points if p.load != load]
    if again is None:
        return score(rest, sla, list(unmeasured) + [load])
    return score(rest + [again], sla, unmeasured)


def held(scores: Sequence[Score]) -> Score:
    """What a config holds: the lowest capacity of its measurements (frontier search + repeats of its
    operating load). Of three measurements, the lowest estimates the 25th percentile of its capacity
    (the expected lowest of n draws sits at 1/(n + 1)): a config whose percentile swings across the SLA at its
    load serves, in a judge's round where it swings, less than its best measurement says (the head to head
    that opened issue 26)."""
    return min(scores, key=lambda s: s.capacity)


def write_winner(repository: Path, model: str, serving: ServingConfig) -> Path:
    """Write the tuned config.pbtxt through the protobuf path, atomically."""
    cfg = candidate_config(repository, model, serving)
    text = config_text(cfg)
    parse_config(text)                   # must round-trip before it replaces the published one
    path = Path(repository) / model / "config.pbtxt"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def max_batch_for(spec: ModelSpec, saturation_batch: int) -> int:
    """max_batch_size from the saturation batch: twice it, at least 8, within the spec's."""
    return int(min(spec.serving.max_batch_size, max(8, 2 * saturation_batch)))


def queue_delays(sla_ms: float) -> list[int]:
    """The queue delays the SLA leaves room for (<= SLA/4), in microseconds."""
    return [d for d in DELAYS_US if d <= sla_ms * 1000 / 4]


def gather_us(batch: int, rate: float) -> float:
    """Microseconds until ``batch`` requests have queued at ``rate`` per second (Poisson: (batch - 1) / rate
    after the first); infinite at no rate."""
    return (batch - 1) / rate * 1e6 if rate > 0 else float("inf")


def aimed_delays(batch: int, rate: float, sla_ms: float) -> list[int]:
    """The two queue delays of those the SLA leaves room for (``queue_delays``) that bracket the time to
    gather ``batch`` requests at ``rate`` (the largest two when it is longer than all, the smallest two
    when shorter than all; the one there is when the SLA leaves room for one)."""
    allowed = queue_delays(sla_ms)
    t = gather_us(batch, rate)
    below = [d for d in allowed if d < t]
    above = [d for d in allowed if d >= t]
    if not below:
        return allowed[:2]
    if not above:
        return allowed[-2:]
    return [below[-1], above[0]]


def preferred_candidates(spec: ModelSpec, saturation_batch: int, mbs: int) -> list[tuple[int, ...]]:
    """The preferred batch sizes the tuner tries after "none": the saturation batch, and the spec's own
    (a preferred size of 1 is no batching: never tried)."""
    out = {(min(saturation_batch, mbs),), tuple(b for b in spec.serving.preferred_batch_sizes if b <= mbs)}
    return sorted(p for p in out if p and p != (1,))


def grid(spec: ModelSpec, variants: Sequence[str], sla_ms: float, saturation: dict[str, int],
         instances: Sequence[int] = (1, 2)) -> list[Candidate]:
    """Every config the tuner can pick (for the tuner-efficiency benchmark): each variant and instance
    count without dynamic batching, and with it at every queue delay the SLA leaves room for and every
    preferred batch size it tries ("none" included), at the max_batch_size it derives from the variant's
    saturation batch (``saturation``: variant -> batch; TuneRecord.saturation["by_variant"]) and at the
    spec's (the batching stage keeps that one where it holds more)."""
    base = ServingConfig.from_spec(spec, dynamic_batching=False, instances=1, threads_per_instance=1,
                                   response_cache=False)
    out = []
    for v in variants:
        saturation_batch = saturation[v]
        for n in instances:
            out.append(Candidate(v, replace(base, instances=n)))
            for mbs in sorted({max_batch_for(spec, saturation_batch), spec.serving.max_batch_size}):
                for pref in [()] + preferred_candidates(spec, saturation_batch, mbs):
                    for d in queue_delays(sla_ms):
                        out.append(Candidate(v, replace(base, dynamic_batching=True, max_batch_size=mbs,
                                                        preferred_batch_sizes=pref, max_queue_delay_us=d, instances=n)))
    return out
