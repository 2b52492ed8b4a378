"""`make bench-fleet-peer`: the fleet's packed pick against Model Analyzer's concurrent mode.

Model Analyzer 1.58 profiles the fleet's models loaded together (`run_config_profile_models_
concurrently_enable`: its quick search, one perf_analyzer per model under mpiexec, each model with
its own SLA as its constraint and its own inputs) on a Triton it starts itself with our server's
flags. Its pick (its first-ranked combination) and ours (the configs of the whole set in our newest
fleet results) are then served on our server and judged alike: the capacity of the whole mix (every
model at its share, each held to its own SLA: ``perf.measure.together``), several rounds in turn
(A B, B A, ...), the ratio taken within each round; each pick's machine priced as the fleet report
prices it. A text ensemble is profiled by Model Analyzer as its encoder (what its configs tune), and
driven through the ensemble in the judge, as its clients call it.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np

from build_engines.records import Record
from build_engines.spec import ServingConfig
from perf.cost import autoscale
from perf.cost import pricing as cost
from perf.cost.fleet import FleetRecord, Served, bill_group, group_day, inputs_for, mixes_of
from perf.cost.fleet_spec import Fleet
from perf.measure import analyzer
from perf.measure.replicates import interval
from perf.measure.results import Interval
from perf.measure.together import MixCapacity, Packed, packed_in_turn
from perf.tuning import peer

OURS, PEER = "ours", "Model Analyzer (concurrent)"
SECONDS_FILE = "seconds"          # the search's wall time, left in its folder for a judge run from it
ROUNDS = 4


@dataclass
class PeerPick:
    """Model Analyzer's first-ranked combination: each model's config, and what it measured of it."""

    configs: dict[str, ServingConfig]        # fleet model name -> its serving config
    names: dict[str, str]                    # fleet model name -> Model Analyzer's config name
    throughput: dict[str, float]             # fleet model name -> what it measured (infer/s, at its concurrency)
    seconds: float
    configs_measured: int
    measurements: int
    stopped: str = ""                        # why its search was stopped before it ended (peer.stopped); "": it ended


@dataclass(kw_only=True)
class FleetPeerRecord(Record):
    """Our packed pick and Model Analyzer's concurrent-mode pick, judged head to head on one server."""

    KIND: ClassVar[str] = "bench-fleet-peer"
    SCHEMA: ClassVar[int] = 1
    WRITER: ClassVar[str] = "make bench-fleet-peer"
    fleet: str
    command: str
    fleet_results: str
    ours: dict[str, ServingConfig]
    peer: PeerPick
    rounds: int
    capacities: dict[str, list[MixCapacity]]    # OURS / PEER -> the whole mix's capacity per round
    ours_over_peer: Interval | None
    monthly_usd: dict[str, list[float | None]]  # each pick's machine group priced per round
    instance: str


def encoder_of(s: Served) -> str:
    """The Triton model whose config serves it (a text ensemble's encoder)."""
    return f"{s.name}_{s.variant}"


def profiled(fleet: Fleet, served: dict[str, Served], work: Path) -> list[peer.Profiled]:
    """What Model Analyzer profiles: each model's served config's model (an ensemble: its encoder, with
    the encoder's own inputs), its SLA."""
    from perf.measure.inputs import input_data_for
    return [peer.Profiled(encoder_of(served[m.name]), m.spec, m.sla, str(input_data_for(m.spec, work)))
            for m in fleet.members]


def summary_pick(work: Path) -> list[str] | None:
    """The combination Model Analyzer's summary report names as its best ("the combination of A and B
    ... is N% better than" or "... provides no gain over the default configuration"), or None without
    a summary."""
    for html in sorted((work / "export" / "reports" / "summaries").glob("*/result_summary.html")):
        m = re.search(r"combination of (.*?) (?:is|provides) ", html.read_text(), re.S)   # "is N% better" / "provides no gain"
        if m:
            return re.findall(r"<strong>([^<]+)</strong>", m.group(1))
    return None


def its_pick(work: Path, served: dict[str, Served], seconds: float) -> PeerPick:
    """Model Analyzer's first-ranked combination: the one its summary names, else the first row of its
    results that meets every model's constraint; its wall time from the search (``seconds``) or, judged
    again from a finished folder, from the ``seconds`` file the search left there."""
    csv_path = work / "export" / "results" / "metrics-model-inference.csv"
    log = work / "model-analyzer.log"
    if not csv_path.exists():
        raise peer.PeerError(f"Model Analyzer wrote no {csv_path.name} (log {log})")
    if not seconds and (work / SECONDS_FILE).exists():
        seconds = float((work / SECONDS_FILE).read_text())
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    by_model = {encoder_of(s): n for n, s in served.items()}
    named = summary_pick(work)
    for row in rows:
        if row.get("Satisfies Constraints", "Yes").strip().lower() not in ("yes", "true", "1"):
            continue
        models, configs = row["Model"].split(","), row["Model Config Path"].split(",")
        if named is not None and sorted(configs) != sorted(named):
            continue
        thr = [float(x) for x in re.findall(r"[0-9.]+", row["Throughput (infer/sec)"].split("[", 1)[-1])]
        if sorted(models) != sorted(by_model):
            continue
        text = log.read_text()
        return PeerPick({by_model[m]: peer.config_serving(work / "output" / c) for m, c in zip(models, configs)},
                        {by_model[m]: c for m, c in zip(models, configs)},
                        {by_model[m]: t for m, t in zip(models, thr)} if len(thr) == len(models) else {},
                        seconds, peer.configs_measured(text), peer.measurements(text) // len(models),
                        peer.stopped(work))
    raise peer.PeerError(f"no combination Model Analyzer measured meets every model's SLA ({csv_path}): "
                         "nothing to judge ours against; relax the SLAs")


def judge(http_url: str, grpc_url: str, repository: Path, fleet: Fleet, served: dict[str, Served],
          ours: dict[str, ServingConfig], pick: PeerPick, inputs: dict[str, str], settings: analyzer.PerfSettings,
          start_rps: float, rounds: int, progress: Callable[[str], None] = print) -> dict[str, list[MixCapacity]]:
    mix = tuple(mixes_of(fleet, served, inputs)[" + ".join(m.name for m in fleet.members)])
    alts = {OURS: Packed(mix, tuple((encoder_of(served[n]), ours[n]) for n in ours)),
            PEER: Packed(mix, tuple((encoder_of(served[n]), pick.configs[n]) for n in pick.configs))}
    return packed_in_turn(http_url, grpc_url, repository, alts, settings, start_rps, rounds, progress=progress)


def priced(fleet: Fleet, caps: list[MixCapacity], instance: cost.Instance, headroom: float,
           policy: autoscale.Policy) -> list[float | None]:
    names = [m.name for m in fleet.members]
    return [bill_group(names, group_day(fleet.members), c.capacity_rps, instance, headroom, policy).monthly_usd
            if c.capacity_rps > 0 else None for c in caps]


def ratio(caps: dict[str, list[MixCapacity]]) -> Interval | None:
    r = [a.capacity_rps / b.capacity_rps for a, b in zip(caps[OURS], caps[PEER]) if b.capacity_rps > 0]
    return interval(r) if r else None


def ours_of(rec: FleetRecord) -> dict[str, ServingConfig]:
    whole = max(rec.groups, key=lambda g: len(g.names))
    return dict(whole.configs)


def start_of(rec: FleetRecord) -> float:
    whole = max(rec.groups, key=lambda g: len(g.names))
    return float(np.median([c.capacity_rps for c in whole.capacities])) or 50.0


def run(fleet: Fleet, repository: Path, build_dir: Path, work_dir: Path, settings: analyzer.PerfSettings, rounds: int,
        max_instances: int, max_concurrency: int, peer_from: Path | None, command: str,
        results_dir: Path | None = None, progress: Callable[[str], None] = print) -> Path:
    """Model Analyzer's concurrent search on the fleet (or the finished one in ``peer_from``), then its pick
    and ours (the newest fleet results' whole set) judged head to head on our server; the results file."""
    from build_engines.pipeline import ensure_published
    from clients import LocalTriton
    from perf.cost.fleet import Plan, serve_member
    from perf.cost.fleet import newest
    from perf.errors import NoResults
    from perf.measure.results import save
    if rounds < 1 or max_instances < 1 or max_concurrency < 1:
        from perf.errors import BadSettings
        raise BadSettings(f"--rounds, --max-instances and --max-concurrency must be >= 1, got {rounds}, "
                          f"{max_instances}, {max_concurrency}")
    rec = newest(fleet.name, fleet.path, results_dir)      # its pick is what Model Analyzer's is judged against
    served = {s.name: s for s in rec.served}
    if sorted(served) != sorted(m.name for m in fleet.members):
        raise NoResults(f"the newest fleet results of {fleet.name!r} ({Path(rec.path).name}) are of "
                        f"{', '.join(sorted(served))}, {fleet.path.name} names {', '.join(m.name for m in fleet.members)}: "
                        f"run `make report FLEET={fleet.path}` again first")
    for m in fleet.members:
        ensure_published(str(m.spec.path), repository, build_dir, precisions=(served[m.name].variant,),
                         progress=progress)
    work = peer_from or work_dir / f"model-analyzer-fleet-{fleet.name}"
    if peer_from is None:
        seconds = peer.run_concurrent(repository, profiled(fleet, served, work_dir), work, max_instances,
                                      max_concurrency, progress=progress)
        (work / SECONDS_FILE).write_text(f"{seconds:.1f}")
    pick = its_pick(work, served, 0.0)
    progress(f"Model Analyzer's pick: {', '.join(f'{k} {v}' for k, v in pick.names.items())} "
             f"({pick.configs_measured} configs{'; its search ' + pick.stopped if pick.stopped else ''})")
    inputs = {m.name: str(inputs_for(m, work_dir)) for m in fleet.members}
    ours = ours_of(rec)
    with LocalTriton(repository, model_control="explicit") as srv:
        for m in fleet.members:
            serve_member(srv, repository, m, Plan(served[m.name].variant, ours[m.name], "ours", None))
        caps = judge(srv.http_url, srv.grpc_url, repository, fleet, served, ours, pick, inputs, settings,
                     start_of(rec), rounds, progress=progress)
    whole = " + ".join(m.name for m in fleet.members)
    kind = rec.priced_as[whole].instance
    inst = cost.load_catalog().instances.get(kind) or cost.Instance(kind, fleet.price_per_hour or 0.0)
    doc = FleetPeerRecord(fleet=fleet.name, command=command, fleet_results=str(rec.path), ours=ours, peer=pick,
                          rounds=rounds, capacities=caps, ours_over_peer=ratio(caps),
                          monthly_usd={k: priced(fleet, v, inst, fleet.headroom, rec.policy) for k, v in caps.items()},
                          instance=inst.name)
    return save(doc, results_dir, name=fleet.name)
