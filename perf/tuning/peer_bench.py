"""`make bench-peer`: does the tuner's pick hold? The tuner run twice on one server (do the two picks
agree?), Model Analyzer's brute search on the same model, server flags and SLA, then the picks judged
head to head by two judge designs neither tuner was built around (perf.tuning.judge), in turn for
several rounds each. Our server is stopped while Model Analyzer measures on its own."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Sequence

from build_engines.records import Record
from build_engines.spec import ModelSpec, ServingConfig
from perf.measure.analyzer import PerfSettings
from perf.measure.frontier import Sla
from perf.measure.results import Interval
from perf.tuning import judge as judging
from perf.tuning import peer
from perf.tuning.tuner import Measured, TuneRecord, Tuner

OURS, OURS_2, PEER = "ours", "ours, run 2", "Model Analyzer"
ROUNDS = 4                   # per judge design: A B, B A, A B, B A


@dataclass
class TunerPick:
    """One tuner run: what it picked and what it cost."""

    label: str
    variant: str
    serving: ServingConfig
    capacity: float            # held at the SLA (tuner.held)
    capacities: list[float]
    seconds: float             # its measuring time (model loads included)
    configs: int
    runs: int                  # perf_analyzer runs
    final_round: str

    @classmethod
    def of(cls, rec: TuneRecord) -> "TunerPick":
        w: Measured = rec.winner
        return cls(w.label, w.variant, w.serving, w.capacity, w.capacities, rec.seconds, rec.candidates_measured,
                   rec.perf_analyzer_runs, rec.final_round)


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

    def ratio(self, design: judging.Judged, num: str = OURS, den: str = PEER) -> Interval:
        return design.ratios[f"{num} / {den}"]

    @property
    def within_noise(self) -> bool:
        """The two picks agree, or neither beat the other under any design (every interval crosses 1)."""
        return self.picks_agree or all(j.ratios[f"{OURS_2} / {OURS}"].crosses_one for j in self.judged)


def run(srv_factory: Callable[[], object], repository: Path, spec: ModelSpec, sla: Sla, settings: PerfSettings,
        work: Path, variants: Sequence[str] = ("fp32", "int8"), rounds: int = ROUNDS,
        designs: Sequence[judging.JudgeDesign] = judging.DESIGNS, tuner_runs: int = 2,
        progress: Callable[[str], None] = print) -> PeerBenchRecord:
    """``srv_factory()``: a context manager giving a started server with explicit model control (the
    tuner and the judges run on it; it is stopped while Model Analyzer runs its own)."""
    picks: list[TunerPick] = []
    with srv_factory() as srv:
        for i in range(tuner_runs):
            progress(f"tuner run {i + 1}/{tuner_runs}")
            t = Tuner(srv.http_url, srv.grpc_url, repository, spec, sla.ms, sla.percentile, variants=variants,
                      settings=settings, progress=progress)
            picks.append(TunerPick.of(t.run()))
    theirs = peer.run(repository, spec, variants, sla, work, os.cpu_count() or 1, input_data=settings.input_data,
                      progress=progress)
    progress(f"Model Analyzer: {theirs.configs_measured} configs in {theirs.seconds:.0f} s; its pick "
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
    judged = []
    with srv_factory() as srv:
        for d in designs:
            progress(f"judge: {d.name}, {rounds} rounds in turn: {', '.join(labels)}")
            judged.append(judging.judge(srv.http_url, srv.grpc_url, repository, contenders, labels, d, settings, sla,
                                        rounds, pairs, progress))
    share = sum(p.seconds for p in picks) / len(picks) / theirs.seconds
    return PeerBenchRecord(model=spec.name, sla_ms=sla.ms, percentile=sla.percentile,
                           command=f"make bench-peer MODEL={spec.name} SLA_MS={sla.ms:g}", runs=picks,
                           picks_agree=agree, peer=theirs, judged=judged, measured_share=share)
