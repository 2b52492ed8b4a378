"""`make report FLEET=fleet.toml`: several models on shared machines, measured together and priced.

1. Serve: one local Triton with every model of the fleet loaded (explicit model control), each as its
   solo tune left it (else as its spec says); the resident memory each load added is measured.
2. Measure: every set of the fleet's models (each alone, each pair, ..., all of them) is a mix at the
   models' shares of the traffic; its capacity (``perf.measure.together``: the largest common scale at
   which every model of the set meets its own SLA, each driven by its own perf_analyzer at the same
   time) is searched once per round, the sets in turn (A B C, C B A), ``rounds`` rounds.
3. Price: every way of splitting the fleet into machine groups (one per machine, all on one, and each
   partition between) is billed per round as the campaign bills one model: fleet rounding at the
   group's peak with headroom, a warm pool for the day's trough, the autoscaling day simulated
   (the group's day: the sum of its models' days), each group on the cheapest catalog kind with this
   machine's cores and the group's measured memory. The cheapest packing (by its median over the
   rounds; a set that missed an SLA at every load in any round is never packed) is set against one
   model per machine, the ratio taken within each round: the interval is of that paired ratio.
A packed group's bill is shared out in proportion to the machine time each model needs alone
(requests per day / solo capacity), so a cheap model does not carry an expensive one.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, ClassVar, Mapping, Sequence

import numpy as np

from build_engines.records import Record
from build_engines.repository import ServingConfig
from perf.cost import autoscale
from perf.cost import pricing as cost
from perf.cost.fleet_spec import Fleet, Member
from perf.errors import SlaUnmet
from perf.measure import analyzer
from perf.measure.replicates import interval
from perf.measure.results import Interval, save
from perf.measure.together import Driven, MixCapacity, capacities_in_turn, warm_up

TOGETHER_ROUNDS = 2          # A B then B A: the sets' alternatives are compared by the mean, where a linear drift cancels
FIRST_SOLO_RPS = 50.0        # where a model's first solo search starts without a solo tune to start from


@dataclass
class Served:
    """How one model of the fleet was served while measured."""

    name: str
    model: str                    # the Triton model driven (a text ensemble: the ensemble)
    variant: str
    serving: ServingConfig
    config_source: str
    memory_gib: float             # resident memory its load added to the server (and its stubs)
    requests_per_day: float
    sla_ms: float
    percentile: str
    traffic_source: str
    tuned_rps: float | None = None   # its solo tune's throughput at the SLA (concurrency mode), if any


@dataclass
class TogetherTune:
    """What co-location changes, tried on one set: instance counts against the cores, the alternatives
    head to head (each capacity per round), the pick (the configs as tuned alone unless beaten by
    FINAL_GAIN on the mean)."""

    alternatives: dict[str, dict[str, int]]      # label -> each model's instance count
    capacities: dict[str, list[float]]
    pick: str
    why: str


@dataclass
class GroupResult:
    """One set of models measured together: its capacity in each round, each model's config in it."""

    names: list[str]
    capacities: list[MixCapacity]
    configs: dict[str, ServingConfig] = field(default_factory=dict)
    tuned: TogetherTune | None = None

    @property
    def label(self) -> str:
        return " + ".join(self.names)

    def capacity(self, r: int) -> float:
        return self.capacities[r].capacity_rps

    @property
    def median_rps(self) -> float:
        return float(np.median([c.capacity_rps for c in self.capacities]))

    @property
    def always_met(self) -> bool:
        return all(c.capacity_rps > 0 for c in self.capacities)

    def latency_at_capacity(self, name: str) -> float | None:
        """The model's SLA percentile at the set's capacity, median over the rounds that measured one."""
        ms = [m.latency_ms for c in self.capacities if (p := c.at_capacity()) for m in p.models
              if m.name == name and m.latency_ms is not None]
        return float(np.median(ms)) if ms else None


@dataclass
class GroupBill:
    """One machine group's month: its fleet on the day its models send, autoscaled."""

    names: list[str]
    instance: str
    usd_per_hour: float
    capacity_rps: float
    peak_instances: int
    warm_pool: int
    instance_hours_per_day: float
    monthly_usd: float


@dataclass
class PartitionBill:
    """One way of splitting the fleet into machine groups, billed in each round (None: a group of it
    met an SLA at no load that round)."""

    groups: list[list[str]]
    monthly_usd: list[float | None]

    @property
    def feasible(self) -> bool:
        return all(m is not None for m in self.monthly_usd)

    @property
    def median_monthly(self) -> float | None:
        return float(np.median(self.monthly_usd)) if self.feasible else None

    @property
    def label(self) -> str:
        return " | ".join(" + ".join(g) for g in self.groups)


@dataclass
class ModelCost:
    """One model's share of the bill, alone and as packed."""

    name: str
    requests_per_day: float
    solo_usd_per_million: float
    packed_usd_per_million: float
    packed_with: list[str]
    latency_ms_packed: float | None      # its SLA percentile at its packed group's capacity (median)
    latency_ms_solo: float | None
    sla_ms: float
    percentile: str


@dataclass
class PricedAs:
    """The instance kind a set is priced as, and why it was chosen."""

    instance: str
    why: str


@dataclass(kw_only=True)
class FleetRecord(Record):
    """`make report FLEET=...`: the fleet's models measured together and priced packed vs one per machine."""

    KIND: ClassVar[str] = "fleet"
    SCHEMA: ClassVar[int] = 2          # 2: policy an autoscale.Policy, priced_as a PricedAs per set
    WRITER: ClassVar[str] = "make report FLEET=<fleet.toml>"
    fleet: str
    fleet_file: str
    rounds: int
    window_ms: int
    headroom: float
    policy: autoscale.Policy
    catalog: cost.CatalogRef
    priced_as: dict[str, PricedAs]      # group label -> the instance kind and why
    server_memory_gib: float
    base_memory_gib: float
    served: list[Served]
    groups: list[GroupResult]
    partitions: list[PartitionBill]
    chosen: list[list[str]]
    solo_monthly_usd: float
    chosen_monthly_usd: float
    solo_over_chosen: Interval | None    # one per machine / the chosen packing, per round (paired)
    models: list[ModelCost]
    bills: list[GroupBill]               # the chosen packing's groups, at their median capacity
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def partitions(names: Sequence[str]) -> list[list[list[str]]]:
    """Every way of splitting ``names`` into non-empty groups (order kept inside and across groups)."""
    if not names:
        return [[]]
    first, rest = names[0], list(names[1:])
    out = []
    for part in partitions(rest):
        out.append([[first]] + part)
        for i in range(len(part)):
            out.append(part[:i] + [[first] + part[i]] + part[i + 1:])
    return out


def subsets(names: Sequence[str]) -> list[list[str]]:
    """Every non-empty set of the names, the single ones first (they start the others' searches)."""
    return [list(c) for k in range(1, len(names) + 1) for c in itertools.combinations(names, k)]


def group_day(members: Sequence[Member]) -> np.ndarray:
    return np.sum([np.asarray(m.day, float) for m in members], axis=0)


def bill_group(names: list[str], day: np.ndarray, capacity_rps: float, instance: cost.Instance, headroom: float,
               policy: autoscale.Policy) -> GroupBill:
    """A group's month, as the campaign bills one model: sized for the day's peak with headroom, a warm
    pool for its trough, the day simulated under the autoscaling policy."""
    traffic = cost.Traffic(float(day.mean() * 86400), float(day.max() / day.mean()))
    fleet = cost.size_fleet(instance, capacity_rps, traffic, headroom, 1)
    warm = max(1, math.ceil(float(day.min()) / fleet.usable_rps))
    sim = autoscale.simulate(day, capacity_rps, replace(policy, min_replicas=min(warm, fleet.peak_instances),
                                                        max_replicas=fleet.peak_instances))
    monthly = sim.instance_hours * instance.usd_per_hour * cost.HOURS_PER_MONTH / 24.0
    return GroupBill(names, instance.name, instance.usd_per_hour, capacity_rps, fleet.peak_instances, warm,
                     sim.instance_hours, monthly)


def usd_per_million(monthly_usd: float, requests_per_day: float) -> float:
    return monthly_usd / (requests_per_day * cost.HOURS_PER_MONTH / 24.0) * 1e6


@dataclass(frozen=True)
class Pricing:
    """What a group is billed with: its instance kind (by its memory), the headroom and the policy."""

    instances: Mapping[str, cost.Instance]     # group label -> the kind it runs on
    headroom: float
    policy: autoscale.Policy


def bill_partition(part: list[list[str]], fleet: Fleet, groups: Mapping[str, GroupResult], r: int,
                   pricing: Pricing) -> float | None:
    total = 0.0
    for g in part:
        res = groups[" + ".join(g)]
        if res.capacity(r) <= 0:
            return None
        total += bill_group(g, group_day([fleet.member(n) for n in g]), res.capacity(r),
                            pricing.instances[res.label], pricing.headroom, pricing.policy).monthly_usd
    return total


def price(fleet: Fleet, groups: Mapping[str, GroupResult], pricing: Pricing) -> tuple[list[PartitionBill], int]:
    """Every partition billed per round, and the index of the cheapest feasible one (by median)."""
    names = [m.name for m in fleet.members]
    rounds = len(next(iter(groups.values())).capacities)
    bills = [PartitionBill(p, [bill_partition(p, fleet, groups, r, pricing) for r in range(rounds)])
             for p in partitions(names)]
    feasible = [i for i, b in enumerate(bills) if b.feasible]
    if not feasible:
        raise SlaUnmet("no way of serving this fleet met every SLA in every round, not even one model per "
                       "machine: relax the SLA of the model the report names as limiting")
    return bills, min(feasible, key=lambda i: (bills[i].median_monthly, len(bills[i].groups)))


def model_costs(fleet: Fleet, groups: Mapping[str, GroupResult], chosen: list[list[str]],
                pricing: Pricing) -> tuple[list[ModelCost], list[GroupBill]]:
    """Each model's $/1M alone and in its chosen group (the group's bill shared by machine time)."""
    solo = {m.name: groups[m.name].median_rps for m in fleet.members}
    out, bills = [], []
    for g in chosen:
        res = groups[" + ".join(g)]
        members = [fleet.member(n) for n in g]
        bill = bill_group(g, group_day(members), res.median_rps, pricing.instances[res.label], pricing.headroom,
                          pricing.policy)
        bills.append(bill)
        need = {m.name: m.requests_per_day / solo[m.name] for m in members}
        for m in members:
            alone = bill_group([m.name], group_day([m]), solo[m.name], pricing.instances[m.name], pricing.headroom,
                               pricing.policy)
            share = bill.monthly_usd * need[m.name] / sum(need.values())
            out.append(ModelCost(m.name, m.requests_per_day, usd_per_million(alone.monthly_usd, m.requests_per_day),
                                 usd_per_million(share, m.requests_per_day), [n for n in g if n != m.name],
                                 res.latency_at_capacity(m.name), groups[m.name].latency_at_capacity(m.name),
                                 m.sla.ms, m.sla.percentile))
    order = [m.name for m in fleet.members]
    return sorted(out, key=lambda c: order.index(c.name)), bills


def paired_text(iv: Interval | None) -> str:
    """A paired ratio as the reports state it: no interval from one round."""
    if iv is None:
        return "no paired round"
    return f"{iv.median:.2f}x (1 round: no interval)" if iv.replicates < 2 else iv.text()


def paired_saving(bills: Sequence[PartitionBill], chosen: int, solo: int) -> Interval | None:
    ratios = [s / c for s, c in zip(bills[solo].monthly_usd, bills[chosen].monthly_usd) if s and c]
    return interval(ratios) if ratios else None


def packing_notes(fleet: Fleet, groups: Mapping[str, GroupResult]) -> list[str]:
    """What the measurements say about who may share a machine."""
    notes = []
    for g in groups.values():
        if len(g.names) < 2:
            continue
        if not g.always_met:
            limit = sorted({n for c in g.capacities if c.capacity_rps <= 0 for n in c.limiting})
            notes.append(f"{g.label}: together, {', '.join(limit) or 'a model'} missed its SLA at every load in a round: "
                         "keep them apart")
            continue
        alone = 1.0 / sum((fleet.member(n).requests_per_day / sum(fleet.member(k).requests_per_day for k in g.names))
                          / groups[n].median_rps for n in g.names)
        notes.append(f"{g.label}: {g.median_rps:.0f} req/s together vs {alone:.0f} req/s if each model's solo "
                     f"capacity added up at the mix's shares ({g.median_rps / alone:.2f}x); limited by "
                     f"{', '.join(sorted({n for c in g.capacities for n in c.limiting})) or 'none measured'}")
    return notes


def estimate_start(label: str, names: Sequence[str], fleet: Fleet, served: Mapping[str, Served],
                   so_far: Mapping[str, list[MixCapacity]]) -> float:
    """Where a set's first search starts: alone, below its solo tune's throughput (or FIRST_SOLO_RPS);
    a set, at the rate its models' solo capacities add up to at the mix's shares (machine time adds)."""
    if len(names) == 1:
        t = served[names[0]].tuned_rps
        return 0.7 * t if t else FIRST_SOLO_RPS
    total = sum(fleet.member(n).requests_per_day for n in names)
    caps = {n: so_far[n][-1].capacity_rps for n in names}
    if any(c <= 0 for c in caps.values()):
        return FIRST_SOLO_RPS
    return 1.0 / sum(fleet.member(n).requests_per_day / total / caps[n] for n in names)


def mixes_of(fleet: Fleet, served: Mapping[str, Served], inputs: Mapping[str, str]) -> dict[str, list[Driven]]:
    out = {}
    for names in subsets([m.name for m in fleet.members]):
        total = sum(fleet.member(n).requests_per_day for n in names)
        out[" + ".join(names)] = [Driven(n, served[n].model, fleet.member(n).requests_per_day / total,
                                         fleet.member(n).sla, inputs[n]) for n in names]
    return out


def instance_alternatives(names: Sequence[str], served: Mapping[str, Served], cores: int
                          ) -> dict[str, dict[str, ServingConfig]]:
    """The configs as tuned alone, and what co-location changes first: where the set's instances add up
    to more than the cores, each model with more than one gives one up; to fewer, each takes one more."""
    base = {n: served[n].serving for n in names}
    total = sum(s.instances for s in base.values())
    alts = {"as tuned alone": base}
    for n in names:
        step = -1 if total > cores and base[n].instances > 1 else 1 if total < cores else 0
        if step:
            alts[f"{n} {base[n].instances + step} instances"] = base | {n: replace(base[n],
                                                                                  instances=base[n].instances + step)}
    return alts


def tune_set(http_url: str, grpc_url: str, repository: Path, names: list[str], mix: Sequence[Driven],
             served: Mapping[str, Served], settings: analyzer.PerfSettings, start_rps: float, cores: int,
             progress: Callable[[str], None] = print) -> tuple[dict[str, ServingConfig], TogetherTune]:
    """One set's configs together: the instance alternatives head to head (TOGETHER_ROUNDS rounds in turn)."""
    from perf.measure.together import Packed, packed_in_turn
    from perf.tuning.tuner import FINAL_GAIN
    alts = instance_alternatives(names, served, cores)
    counts = {k: {n: s.instances for n, s in v.items()} for k, v in alts.items()}
    total = sum(counts["as tuned alone"].values())
    if len(alts) == 1:
        why = (f"{total} instances on {cores} cores: they add up" if total == cores else
               f"{total} instances on {cores} cores, none with one to give up")
        return alts["as tuned alone"], TogetherTune(counts, {}, "as tuned alone", f"nothing to change ({why})")
    progress(f"  tuning {' + '.join(names)} together: {', '.join(alts)} ({total} instances on {cores} cores)")
    packed = {k: Packed(tuple(mix), tuple((f"{n}_{served[n].variant}", s) for n, s in v.items()))
              for k, v in alts.items()}
    caps = packed_in_turn(http_url, grpc_url, repository, packed, settings, start_rps, TOGETHER_ROUNDS,
                          progress=progress)
    means = {k: float(np.mean([c.capacity_rps for c in v])) for k, v in caps.items()}
    best = max(means, key=means.get)
    pick = best if means[best] > means["as tuned alone"] * FINAL_GAIN else "as tuned alone"
    why = (f"{pick}: {means[pick]:.0f} req/s vs {means['as tuned alone']:.0f} as tuned alone (mean of "
           f"{TOGETHER_ROUNDS} rounds in turn)" if pick != "as tuned alone" else
           f"none beat the configs as tuned alone by {FINAL_GAIN - 1:.0%} ({', '.join(f'{k} {v:.0f}' for k, v in means.items())} req/s)")
    return alts[pick], TogetherTune(counts, {k: [c.capacity_rps for c in v] for k, v in caps.items()}, pick, why)


def measure_fleet(http_url: str, grpc_url: str, repository: Path, fleet: Fleet, served: Mapping[str, Served],
                  inputs: Mapping[str, str], settings: analyzer.PerfSettings, together: bool = True,
                  progress: Callable[[str], None] = print) -> dict[str, GroupResult]:
    """Each set's configs (tuned together first, where co-location changes something), then every set
    measured in turn over the rounds, each with its own configs loaded."""
    import os
    from perf.measure.together import load_configs
    mixes = mixes_of(fleet, served, inputs)
    names = {label: [d.name for d in mix] for label, mix in mixes.items()}
    warm_up(grpc_url, max(mixes.values(), key=len), settings)
    configs = {label: {n: served[n].serving for n in names[label]} for label in mixes}
    tunes: dict[str, TogetherTune] = {}
    for label in (k for k in mixes if together and len(names[k]) > 1):
        guess = estimate_start(label, names[label], fleet, served,
                               {n: [MixCapacity(served[n].tuned_rps or 4 * FIRST_SOLO_RPS, [])] for n in names[label]})
        configs[label], tunes[label] = tune_set(http_url, grpc_url, repository, names[label], mixes[label], served,
                                                settings, guess, os.cpu_count() or 1, progress)
    # what the server holds now (after a tune: the last alternative it measured), so each set loads its own
    loaded: dict[str, ServingConfig | None] = {n: None if tunes else served[n].serving for n in served}

    def load(label: str) -> None:
        changed = [(f"{n}_{served[n].variant}", s) for n, s in configs[label].items() if loaded[n] != s]
        if changed:
            load_configs(http_url, repository, changed, mixes[label])
            loaded.update({n: configs[label][n] for n in configs[label]})
    caps = capacities_in_turn(grpc_url, mixes, settings,
                              lambda label, so_far: estimate_start(label, names[label], fleet, served, so_far),
                              fleet.rounds, progress=progress, before=load)
    return {label: GroupResult(names[label], caps[label], configs[label], tunes.get(label)) for label in mixes}


def save_record(rec: FleetRecord, results_dir: Path | None) -> Path:
    return save(rec, results_dir, name=rec.fleet)


def newest(fleet_name: str, fleet_path: Path | str, results_dir: Path | None = None) -> FleetRecord:
    """The newest fleet results of ``fleet_name``, or NoResults saying what to run."""
    from perf.errors import NoResults
    from perf.measure.results import RESULTS_DIR, latest, load_all
    rec = latest(load_all(FleetRecord, results_dir, fleet=fleet_name))
    if rec is None:
        raise NoResults(f"no fleet results for {fleet_name!r} in {results_dir or RESULTS_DIR}; run "
                        f"`make report FLEET={fleet_path}` first")
    return rec


def _solo_tune(m: Member, results_dir: Path | None):
    from perf.measure.results import latest, load_all
    from perf.tuning.tuner import TuneRecord
    return latest(load_all(TuneRecord, results_dir, model=m.name))


@dataclass(frozen=True)
class Plan:
    """How a model of the fleet is to be served: its solo tune's pick, else its spec's [serving]."""

    variant: str
    serving: ServingConfig
    source: str
    tuned_rps: float | None


def plan_member(m: Member, results_dir: Path | None) -> Plan:
    tune = _solo_tune(m, results_dir)
    if tune is not None and tune.winner.meets_sla and m.variant in (None, tune.winner.variant):
        return Plan(tune.winner.variant, tune.winner.serving,
                    f"its solo tune ({Path(tune.path).name}: {tune.percentile} <= {tune.sla_ms:g} ms)",
                    tune.winner.throughput)
    why = (f"its solo tune picked {tune.winner.variant}, the fleet spec asks for {m.variant}" if tune is not None
           and tune.winner.meets_sla else f"no solo tune of {m.name} in results/")
    return Plan(m.variant or "fp32", ServingConfig.from_spec(m.spec),
                f"its spec's [serving] ({why}; `make report MODEL={m.name}` tunes it)", None)


def serve_member(srv, repository: Path, m: Member, plan: Plan) -> Served:
    """Load one model of the fleet as planned on ``srv``, and measure the resident memory the load added."""
    from perf.measure.sweeps import load_candidate, load_model
    variant, serving, tuned, source = plan.variant, plan.serving, plan.tuned_rps, plan.source
    before = srv.rss_gib(peak=False)
    model = f"{m.name}_{variant}"
    load_candidate(srv.http_url, repository, model, serving)
    if m.spec.extra.get("text_ensemble"):          # clients call the ensemble, with strings: so is it driven
        load_model(srv.http_url, f"{m.name}_tokenizer")
        model = f"{m.name}_text_{variant}"
        load_model(srv.http_url, model)
    return Served(m.name, model, variant, serving, source, max(0.0, srv.rss_gib(peak=False) - before),
                  m.requests_per_day, m.sla.ms, m.sla.percentile, m.traffic_source, tuned)


def text_input_data(m: Member, work: Path) -> Path:
    """A text ensemble's requests: the held-out token sequences decoded back to text by the spec's own
    tokenizer, one string per request (TEXT, BYTES [1]), as its clients send them."""
    import hashlib
    import json
    from tokenizers import Tokenizer
    from build_engines.spec import resolve_callable
    from perf.measure.inputs import request_samples, write_input_data
    folder = Path(resolve_callable(m.spec.extra.get("tokenizer_json"), "extra.tokenizer_json", m.spec.path)())
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ids, mask = (t.name for t in m.spec.inputs[:2])
    texts = [tok.decode(s[ids][0][s[mask][0] == 1].tolist(), skip_special_tokens=True) for s in request_samples(m.spec)]
    texts = [t for t in texts if t.strip()]
    path = work / f"inputs-{m.name}-text-{hashlib.sha256(json.dumps(texts).encode()).hexdigest()[:12]}.json"
    return path if path.exists() else write_input_data(path, [{"TEXT": np.array([[t]], dtype=object)} for t in texts])


def inputs_for(m: Member, work: Path) -> Path:
    from perf.measure.inputs import input_data_for
    return text_input_data(m, work) if m.spec.extra.get("text_ensemble") else input_data_for(m.spec, work)


def run(fleet: Fleet, repository: Path, build_dir: Path, settings: analyzer.PerfSettings | None = None,
        policy: autoscale.Policy | None = None, results_dir: Path | None = None,
        progress: Callable[[str], None] = print, together: bool = True) -> Path:
    """Serve the fleet on one local Triton, measure every set of its models together, price every
    packing against one model per machine; the fleet results file (see the module's doc)."""
    import time
    from build_engines.pipeline import ensure_published
    from clients import LocalTriton
    from perf.measure.results import RESULTS_DIR
    t0 = time.perf_counter()
    catalog = cost.load_catalog()
    if fleet.instance:
        catalog.get(fleet.instance, fleet.price_per_hour)      # an unknown kind fails now, not after measuring
    plans = {m.name: plan_member(m, results_dir) for m in fleet.members}
    for m in fleet.members:               # what is served is built (and checked against its build) first
        ensure_published(str(m.spec.path), repository, build_dir, precisions=(plans[m.name].variant,),
                         progress=progress)
    settings = settings or analyzer.PerfSettings(measurement_interval_ms=1000)
    policy = policy or autoscale.Policy()
    work = Path(results_dir or RESULTS_DIR) / "work"
    inputs = {m.name: str(inputs_for(m, work)) for m in fleet.members}
    with LocalTriton(repository, model_control="explicit") as srv:
        base = srv.rss_gib(peak=False)
        served = {m.name: serve_member(srv, repository, m, plans[m.name]) for m in fleet.members}
        for s in served.values():
            progress(f"serving {s.name} as {s.model} ({s.variant}), from {s.config_source}; +{s.memory_gib:.2f} GiB; "
                     f"SLA {s.percentile} <= {s.sla_ms:g} ms, {s.requests_per_day:.3g} req/day")
        n_sets = len(subsets(list(served)))
        progress(f"measuring {n_sets} sets of models together, {fleet.rounds} rounds in turn, on {srv.grpc_url}")
        groups = measure_fleet(srv.http_url, srv.grpc_url, repository, fleet, served, inputs, settings, together,
                               progress)
        peak = srv.rss_gib()
    # what was measured is kept before anything can refuse to price it (an hour of measuring is not lost)
    import json
    from build_engines.records import plain
    measured = work / f"fleet-{fleet.name}-sets-{int(time.time())}.json"
    measured.write_text(json.dumps(plain(list(groups.values())), indent=1))
    for m in fleet.members:
        if not groups[m.name].always_met:
            raise SlaUnmet(f"{m.name} missed {m.sla} even alone at every load down to 1 req/s in a round: relax its "
                           f"sla_ms in {fleet.path.name} (or tune it: `make report MODEL={m.name}`); the sets' "
                           f"measurements are in {measured}")
    instances, priced_as = {}, {}
    for label, g in groups.items():
        mem = base + sum(served[n].memory_gib for n in g.names) + 1.0       # + 1 GiB for the OS
        instances[label], why = catalog.this_machine(fleet.instance, fleet.price_per_hour, memory_gib=mem)
        priced_as[label] = PricedAs(instances[label].name, why)
    pricing = Pricing(instances, fleet.headroom, policy)
    bills, best = price(fleet, groups, pricing)
    solo = next(i for i, b in enumerate(bills) if len(b.groups) == len(fleet.members))
    models, chosen_bills = model_costs(fleet, groups, bills[best].groups, pricing)
    rec = FleetRecord(
        fleet=fleet.name, fleet_file=str(fleet.path), rounds=fleet.rounds, window_ms=settings.measurement_interval_ms,
        headroom=fleet.headroom, policy=policy, catalog=catalog.ref(),
        priced_as=priced_as, server_memory_gib=peak, base_memory_gib=base, served=list(served.values()),
        groups=list(groups.values()), partitions=bills, chosen=bills[best].groups,
        solo_monthly_usd=bills[solo].median_monthly, chosen_monthly_usd=bills[best].median_monthly,
        solo_over_chosen=paired_saving(bills, best, solo), models=models, bills=chosen_bills,
        notes=packing_notes(fleet, groups), seconds=time.perf_counter() - t0)
    path = save_record(rec, results_dir)
    progress(f"fleet: {bills[best].label} at ${rec.chosen_monthly_usd:,.0f}/month vs one per machine "
             f"${rec.solo_monthly_usd:,.0f}; {path}")
    return path

