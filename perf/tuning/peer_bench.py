"""`make bench-peer`: does the tuner's pick hold? The tuner run twice on one server (do the two picks
agree?), Model Analyzer's brute search on the same model, server flags and SLA, then the picks judged
head to head by two judge designs neither tuner was built around (perf.tuning.judge), in turn for
several rounds each. Our server is stopped while Model Analyzer measures on its own."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import numpy as np

from build_engines.records import Record
from build_engines.runtime import environment
from build_engines.spec import ModelSpec, ServingConfig
from perf.measure.analyzer import PerfSettings
from perf.measure.frontier import Sla
from perf.measure.results import Interval, save
from perf.tuning import judge as judging
from perf.tuning import peer
from perf.tuning.tuner import Measured, TuneRecord, Tuner

OURS, OURS_2, PEER = "ours", "ours, run 2", "Model Analyzer"
# per judge design, A B then B A in turn: 6, not 4; a percentile-bootstrap interval of the median of 4
# rounds spans about the lowest to the highest (the signals record at 3514e94: 1.03x [0.89, 1.11] from
# rounds 0.89-1.11), so one slow round decided its lower end
ROUNDS = 6


@dataclass
class TunerPick:
    """One tuner run: what it picked and what it cost."""

    label: str
    variant: str
    serving: ServingConfig
    capacity: float            # held at the SLA (tuner.held)
    concurrency: float         # where it met the SLA in that measurement
    capacities: list[float]
    seconds: float             # its measuring time (model loads included)
    configs: int
    runs: int                  # perf_analyzer runs
    final_round: str
    # over the configs it measured that met the SLA: the median of (highest / lowest capacity - 1) of their
    # measurements (the search and its repeats), i.e. how far one measurement of a config swings
    repeat_spread: float = 0.0
    held: dict[str, float] = field(default_factory=dict)   # every config it measured -> its held capacity

    @classmethod
    def of(cls, rec: TuneRecord) -> "TunerPick":
        w: Measured = rec.winner
        swings = [max(m.capacities) / min(m.capacities) - 1 for m in rec.candidates
                  if len(m.capacities) > 1 and min(m.capacities) > 0]
        return cls(w.label, w.variant, w.serving, w.capacity, w.concurrency or 1, w.capacities, rec.seconds,
                   rec.candidates_measured, rec.perf_analyzer_runs, rec.final_round,
                   float(np.median(swings)) if swings else 0.0,
                   {m.label: m.capacity for m in rec.candidates if m.stage != "final"})


def between_runs(runs: Sequence[TunerPick]) -> list[float]:
    """For each config both of the first two runs measured (and met the SLA in): how far apart its held
    capacities were (highest / lowest - 1): the noise a stage decision must stand above (tuner.GAIN)."""
    if len(runs) < 2:
        return []
    a, b = runs[0].held, runs[1].held
    return sorted(max(a[k], b[k]) / min(a[k], b[k]) - 1 for k in a.keys() & b.keys() if min(a[k], b[k]) > 0)


@dataclass(kw_only=True)
class PeerBenchRecord(Record):
    """The tuner's two picks against Model Analyzer's, judged by two designs (results/bench-peer-*.json)."""

    KIND: ClassVar[str] = "bench-peer"
    SCHEMA: ClassVar[int] = 1
    WRITER: ClassVar[str] = "make bench-peer"
    model: str
    sla_ms: float
    percentile: str
    command: str
    runs: list[TunerPick]                  # the tuner's runs, in order
    picks_agree: bool                      # the same config both times
    peer: peer.PeerRun
    judged: list[judging.Judged]           # one per design
    measured_share: float                  # the tuner's mean measuring time over Model Analyzer's
    peer_from: str = ""                    # when its search was judged again (--peer-from): that search's date
    peer_from_file: str = ""               # and the peer-run record it came from

    def ratio(self, design: judging.Judged, num: str = OURS, den: str = PEER) -> Interval | None:
        """None: ``den`` met the SLA at no grid load of that design in any round (design.unmet says so)."""
        return design.ratios.get(f"{num} / {den}")

    def ratio_text(self, design: judging.Judged, num: str = OURS, den: str = PEER) -> str:
        r = self.ratio(design, num, den)
        return r.text() if r else f"no ratio ({den} met the SLA at no load of the grid in any round)"

    @property
    def within_noise(self) -> bool:
        """The two picks agree, or neither beat the other under any design (every interval crosses 1; a
        run whose pick never met the SLA on a grid lost to the other outright)."""
        return self.picks_agree or all((r := self.ratio(j, OURS_2, OURS)) is not None and r.crosses_one
                                       for j in self.judged)


def _machine(env: dict) -> str:
    """What a search's measurements depend on: the CPU, its cores and its integer kernels."""
    return f"{env.get('cpu', '?')} ({env.get('cores', '?')} cores, INT8 {env.get('int8_isa', '?')})"


def run(srv_factory: Callable[[], object], repository: Path, spec: ModelSpec, sla: Sla, settings: PerfSettings,
        work: Path, variants: Sequence[str] = ("fp32", "int8"), rounds: int = ROUNDS,
        designs: Sequence[judging.JudgeDesign] = judging.DESIGNS, tuner_runs: int = 2,
        progress: Callable[[str], None] = print, earlier: peer.PeerRunRecord | None = None,
        results_dir: Path | None = None) -> PeerBenchRecord:
    """``srv_factory()``: a context manager giving a started server with explicit model control (the
    tuner and the judges run on it; it is stopped while Model Analyzer runs its own). Model Analyzer's
    search is saved as soon as it ends (results/peer-run-*.json); ``earlier``: such a search of the same
    model, SLA and variants, judged again instead of searching anew (it takes half an hour; its date is
    kept in the record)."""
    peer.check(sla)
    if earlier is not None:
        same = (earlier.model, earlier.sla_ms, earlier.percentile) == (spec.name, sla.ms, sla.percentile)
        if not same or sorted(earlier.run.variants) != sorted(variants):
            raise peer.PeerError(f"{earlier.path}: Model Analyzer searched {earlier.model} {earlier.run.variants} for "
                                 f"{earlier.percentile} <= {earlier.sla_ms:g} ms, not {spec.name} {list(variants)} for "
                                 f"{sla}: run without --peer-from")
        here, there = _machine(environment()), _machine(earlier.environment)
        if here != there:
            raise peer.PeerError(f"{earlier.path}: Model Analyzer searched on {there}, this machine is {here}: its "
                                 "measurements are not this machine's; run without --peer-from")
    picks: list[TunerPick] = []
    with srv_factory() as srv:
        for i in range(tuner_runs):
            progress(f"tuner run {i + 1}/{tuner_runs}")
            t = Tuner(srv.http_url, srv.grpc_url, repository, spec, sla.ms, sla.percentile, variants=variants,
                      settings=settings, progress=progress)
            rec = t.run()
            progress(f"tuner run {i + 1}: {save(rec, results_dir, name=spec.name)}")
            picks.append(TunerPick.of(rec))
    if earlier is not None:
        theirs = earlier.run
    else:
        theirs = peer.run(repository, spec, variants, sla, work, os.cpu_count() or 1, input_data=settings.input_data,
                          progress=progress)
        saved = save(peer.PeerRunRecord(model=spec.name, sla_ms=sla.ms, percentile=sla.percentile, run=theirs),
                     results_dir, name=spec.name)
        progress(f"Model Analyzer's search: {saved}")
    progress(f"Model Analyzer: {theirs.configs_measured} configs in {theirs.seconds:.0f} s"
             f"{' (its search ' + theirs.stopped + ')' if theirs.stopped else ''}; its pick "
             f"{theirs.pick.label()} ({theirs.pick.throughput:.0f}/s at c={theirs.pick.concurrency})")
    agree = all(p.variant == picks[0].variant and p.serving == picks[0].serving for p in picks)
    contenders = {OURS: (f"{spec.name}_{picks[0].variant}", picks[0].serving),
                  PEER: (theirs.pick.model, theirs.pick.serving)}
    labels = {OURS: picks[0].label, PEER: theirs.pick.label()}
    pairs = [(OURS, PEER)]
    if not agree:
        contenders[OURS_2] = (f"{spec.name}_{picks[1].variant}", picks[1].serving)
        labels[OURS_2] = picks[1].label
        pairs += [(OURS_2, PEER), (OURS_2, OURS)]
    judged_picks = picks[:1] if agree else picks[:2]
    reference = max([p.concurrency for p in judged_picks] + [theirs.pick.concurrency])
    judged = []
    with srv_factory() as srv:
        for d in designs:
            progress(f"judge: {d.name} (c {', '.join(map(str, d.loads(reference)))}), {rounds} rounds in turn: "
                     f"{', '.join(labels)}")
            judged.append(judging.judge(srv.http_url, srv.grpc_url, repository, contenders, labels, d, reference,
                                        settings, sla, rounds, pairs, progress))
    share = sum(p.seconds for p in picks) / len(picks) / theirs.seconds
    return PeerBenchRecord(model=spec.name, sla_ms=sla.ms, percentile=sla.percentile,
                           command=f"make bench-peer MODEL={spec.name} SLA_MS={sla.ms:g}", runs=picks,
                           picks_agree=agree, peer=theirs, judged=judged, measured_share=share,
                           peer_from=earlier.created[:16] if earlier is not None else "",
                           peer_from_file=str(earlier.path) if earlier is not None else "")
