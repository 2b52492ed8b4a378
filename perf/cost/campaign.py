"""`make report`: the cost campaign. Baseline (FP32, no batching, one instance), then each lever in
turn, each measured on the real server or simulated from measurements, never assumed:
quantization, dynamic batching, instance count, right-sizing across the catalog, the response
cache, autoscaling. Every number in the report comes from the results files this writes."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import numpy as np

from build_engines.records import Record, plain
from build_engines.spec import ModelSpec, load_spec
from perf.measure import analyzer
from perf.cost import autoscale
from perf.cost import pricing as cost
from perf.errors import CostError, PerfError
from perf.measure.results import save
from perf.tuning.tuner import Candidate, Measured, TuneRecord, Tuner, write_winner

LOCAL_PRICED_AS = "c7i.large"   # 2 vCPUs, like this machine's 2 cores


def zipf_stream(n_items: int, length: int, s: float = 1.1, seed: int = 0) -> np.ndarray:
    """Indices of a request stream with repeats: popularity follows Zipf(s) over n_items."""
    rng = np.random.default_rng(seed)
    w = 1.0 / np.arange(1, n_items + 1) ** s
    return rng.choice(n_items, size=length, p=w / w.sum())


def population(samples: list[dict[str, np.ndarray]], n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """n distinct requests: the held-out samples, then copies with a small perturbation (distinct bytes,
    so they miss the cache like new users' requests would). Inputs that cannot be perturbed (integers,
    strings: token ids, texts) give only as many distinct requests as the data has."""
    rng = np.random.default_rng(seed)
    if not all(v.dtype.kind == "f" for v in samples[0].values()):
        return samples[:n]
    out = []
    for i in range(n):
        s = samples[i % len(samples)]
        if i >= len(samples):
            s = {k: (v + rng.normal(0, 1e-3, v.shape)).astype(v.dtype) for k, v in s.items()}
        out.append(s)
    return out


def cache_stats(url: str, model: str) -> dict[str, int]:
    from clients import TritonClient
    with TritonClient(url, model, "http") as c:
        st = c.statistics()["model_stats"][0]["inference_stats"]
    return {"hits": int(st["cache_hit"]["count"]), "misses": int(st["cache_miss"]["count"])}


def cache_step(tuner: Tuner, winner: Measured, work: Path, population_size: int = 20000, stream_len: int = 20000,
               replay_rps: float = 2000.0) -> dict:
    """Triton's response cache on the winner, measured in two parts:
    1. hit rate: one pass of a Zipf stream over a large population, replayed open-loop by our
       generator into the freshly loaded cached config; hits and misses from Triton's statistics;
    2. speed: perf_analyzer on requests that all hit vs the same config without the cache.
    The served throughput at that hit rate follows from the per-request times:
    1 / (h / all_hit + (1 - h) / no_cache)."""
    from perf.measure import loadgen
    from perf.measure.inputs import request_samples, write_input_data
    pop = population(request_samples(tuner.spec), population_size)
    population_size = len(pop)
    order = zipf_stream(population_size, stream_len)
    model = tuner.model(winner.candidate.variant)
    on_cfg = Candidate(winner.candidate.variant, replace(winner.candidate.serving, response_cache=True))
    from perf.measure.sweeps import load_candidate
    load_candidate(tuner.http_url, tuner.repository, model, on_cfg.serving)
    before = cache_stats(tuner.http_url, model)
    res, _ = loadgen.run_open_loop(tuner.grpc_url, model, pop, np.arange(stream_len) / replay_rps, order=order)
    after = cache_stats(tuner.http_url, model)
    hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
    h = hits / (hits + misses) if hits + misses else 0.0
    seen = sorted(set(order.tolist()))[:2000]
    data = write_input_data(work / "cache_hits.json", [pop[i] for i in seen])
    base_settings = tuner.settings
    tuner.settings = replace(base_settings, input_data=str(data))
    try:
        all_hit = tuner.measure(on_cfg, "cache")
    finally:
        tuner.settings = base_settings
    off = winner.throughput
    effective = 1.0 / (h / all_hit.throughput + (1 - h) / off) if all_hit.throughput > 0 and off > 0 else off
    return {"hit_rate": h, "hits": hits, "misses": misses, "replay": res.as_dict(),
            "stream": {"distribution": "zipf", "s": 1.1, "length": stream_len, "population": population_size,
                       "distinct_in_stream": int(len(set(order.tolist())))},
            "all_hit": plain(all_hit), "no_cache_throughput": off, "effective_throughput": effective}


@dataclass
class CostRow:
    """One lever of the campaign: its throughput per instance at the SLA, and what that costs."""

    step: str
    instance: str
    usd_per_hour: float
    throughput_rps: float
    usd_per_million_at_sla_throughput: float
    fleet_peak: int
    monthly_usd: float
    usd_per_million_served: float
    accuracy: float | None
    source: str
    kept: bool = True
    note: str = ""
    saving_vs_previous: float = 0.0


@dataclass
class Autoscaling:
    """The simulated day against the sized fleet (and what the manifests are sized from)."""

    policy: dict
    instance_hours: float
    always_on_instance_hours: float
    idle_saved_fraction: float
    short_minutes: int
    warm_pool: int
    peak_fleet: int
    per_instance_rps: float
    uncached_rps: float
    cache_hit_rate_source: str | None
    usable_rps: float
    hourly_demand_rps: list[float]
    ready_every_10_min: list[int]


@dataclass(kw_only=True)
class CampaignRecord(Record):
    """`make report`: each lever's measured or simulated effect on the cost per request."""

    KIND: ClassVar[str] = "campaign"
    SCHEMA: ClassVar[int] = 2
    WRITER: ClassVar[str] = "make report"
    model: str
    sla_ms: float
    percentile: str
    traffic: cost.Traffic
    headroom: float
    catalog: dict
    local_priced_as: str
    steps: list[CostRow]
    baseline_over_optimized: float
    autoscaling: Autoscaling
    winner: Measured
    tune_file: str
    imports: list[str]
    tuner: dict


def fleet_row(name: str, instance: cost.Instance, rps: float, traffic: cost.Traffic, headroom: float, min_warm: int,
              accuracy: float | None, source: str, kept: bool = True, note: str = "") -> CostRow:
    fs = cost.size_fleet(instance, rps, traffic, headroom, min_warm)
    return CostRow(name, instance.name, instance.usd_per_hour, rps, cost.cost_per_million(instance.usd_per_hour, rps),
                   fs.peak_instances, fs.monthly_usd_always_on_peak,
                   cost.monthly_cost_per_million(fs.monthly_usd_always_on_peak, traffic), accuracy, source, kept, note)


def accuracies(build_dir: Path, spec: ModelSpec) -> dict[str, float | None]:
    """Each served precision's gate accuracy, from the build record (none when never built)."""
    from build_engines.pipeline import BuildRecord
    rep = build_dir / spec.name / BuildRecord.FILE
    if not rep.exists():
        return {}
    rec = BuildRecord.read(rep)
    return {p: rec.served_accuracy(p) for p in ("fp32", "fp16", "int8")}


def run(model: str, sla_ms: float, repository: Path, build_dir: Path, traffic: cost.Traffic, percentile: str = "p99",
        instance: str = LOCAL_PRICED_AS, price_per_hour: float | None = None, headroom: float = 0.2,
        policy: autoscale.Policy | None = None, imports: Sequence[Path] = (), settings: analyzer.PerfSettings | None = None,
        progress: Callable[[str], None] = print, results_dir: Path | None = None) -> Path:
    from build_engines.pipeline import ensure_published
    from clients import LocalTriton

    spec = load_spec(model)
    if spec.metric != "top1" or any(t.dtype == "string" for t in spec.inputs):
        raise PerfError(f"the tuning campaign measures tensor models; for {model} use `make perf MODEL={model}` "
                        "(its report has the cost section)")
    catalog = cost.load_catalog()
    local = catalog.get(instance, price_per_hour)
    if traffic.requests_per_day <= 0:
        raise CostError("traffic must be > 0 requests/day to size a fleet and a bill")
    ensure_published(model, repository, build_dir, progress=progress)
    acc = accuracies(build_dir, spec)
    from perf.measure.inputs import input_data_for
    from perf.measure.results import RESULTS_DIR
    run_id = f"{int(time.time())}"
    work = Path(results_dir or RESULTS_DIR) / "work"
    work.mkdir(parents=True, exist_ok=True)
    settings = settings or analyzer.PerfSettings(measurement_interval_ms=1000)
    if settings.input_data is None:        # real held-out samples, never perf_analyzer's random data
        settings = replace(settings, input_data=str(input_data_for(spec, work)))
    with LocalTriton(repository, model_control="explicit") as srv:
        progress(f"local Triton {srv.http_url}; SLA {percentile} <= {sla_ms:g} ms")
        tuner = Tuner(srv.http_url, srv.grpc_url, repository, spec, sla_ms, percentile,
                      settings=settings, progress=progress)
        tune = tuner.run(instance=local.name)
        winner = tuner.winner
        tune.cache = cache_step(tuner, winner, work)
        tune.run_id, tune.machine_note, tune.server_url = run_id, f"this machine, priced as {local.name}", srv.http_url
        tune_path = save(tune, results_dir, name=spec.name)
    cfg_path = write_winner(repository, tuner.model(winner.candidate.variant), winner.candidate.serving)
    progress(f"tuned config written: {cfg_path}")
    return build_campaign(spec, tune_path, traffic, local, headroom, policy, imports, acc, results_dir, progress)


def build_campaign(spec: ModelSpec, tune_path: Path, traffic: cost.Traffic, local: cost.Instance, headroom: float,
                   policy: autoscale.Policy | None, imports: Sequence[Path], acc: dict, results_dir: Path | None,
                   progress: Callable[[str], None] = print) -> Path:
    """Compose the levers from the measured tune file (and imported ones) into the campaign file."""
    tune = TuneRecord.read(tune_path)
    src = Path(tune_path).name
    rows = []
    prec = {c.variant: c for c in tune.stage("precision")}
    if "fp32" not in prec or prec["fp32"].throughput <= 0:
        raise CostError("the baseline (FP32, no batching, one instance) misses the SLA; relax the SLA")
    base = prec["fp32"]
    rows.append(fleet_row("baseline: FP32, no batching, 1 instance", local, base.throughput, traffic, headroom, 1,
                          acc.get("fp32"), src))
    inc = base
    if "int8" in prec:
        q = prec["int8"]
        kept = tune.stage_winners["precision"].variant == "int8"   # the tuner's pick
        rows.append(fleet_row("+ INT8 quantization", local, q.throughput or 1e-9, traffic, headroom, 1, acc.get("int8"),
                              src, kept, "" if kept else "measured, slower than FP32 here: not kept"))
        inc = q if kept else inc
    for stage, label in (("batching", "+ dynamic batching (tuned)"), ("instances", "+ instance group (tuned)")):
        best = tune.stage_winners[stage]      # the tuner's incumbent after this stage
        kept = best.label != inc.label
        tried = len(tune.stage(stage))
        rows.append(fleet_row(label + f": {best.label}", local, best.throughput, traffic, headroom, 1,
                              acc.get(best.variant), src, kept,
                              f"{tried} config{'s' if tried != 1 else ''} measured" + ("" if kept else "; none beat the previous step: not kept")))
        inc = best
    # right-sizing: the cheapest $/1M among kinds with measured throughput (this machine + imports)
    options = [(local, inc.throughput, src)]
    catalog = cost.load_catalog()
    for p in imports:
        imported = TuneRecord.read(p)
        if imported.model != spec.name:
            raise CostError(f"{p}: a tune of {imported.model}, not of {spec.name}")
        options.append((catalog.get(imported.instance), imported.winner.throughput, Path(p).name))
    best_kind = min(options, key=lambda o: cost.cost_per_million(o[0].usd_per_hour, o[1]))
    note = "" if len(options) > 1 else "only this machine measured; import tune files from other kinds with --import"
    rows.append(fleet_row(f"+ right-sizing: {best_kind[0].name}", best_kind[0], best_kind[1], traffic, headroom, 1,
                          acc.get(inc.variant), best_kind[2], best_kind[0] is not local, note))
    final_inst, final_rps = best_kind[0], best_kind[1]
    uncached_rps = final_rps   # what a pod serves on a cold cache: deployments are sized from this
    # response cache (measured on a repeating stream)
    c = tune.cache
    if c:
        eff, off = c["effective_throughput"], c["no_cache_throughput"]
        kept = eff > off * 1.02
        rps = final_rps * (eff / off) if kept and off > 0 else final_rps
        rows.append(fleet_row(f"+ response cache (hit rate {c['hit_rate']:.1%}, Zipf stream)", final_inst, rps, traffic,
                              headroom, 1, acc.get(inc.variant), src, kept,
                              f"all-hit {c['all_hit']['throughput']:.0f} vs no-cache {off:.0f} infer/s; at the measured hit "
                              f"rate {eff:.0f}" + ("" if kept else ": not kept")))
        final_rps = rps
    # autoscaling: a simulated diurnal day against the sized fleet
    fleet = cost.size_fleet(final_inst, final_rps, traffic, headroom, 1)
    usable = fleet.usable_rps
    day = autoscale.diurnal_profile(traffic.average_rps, traffic.peak_to_average)
    warm = max(1, math.ceil(day.min() / usable))
    pol = policy or autoscale.Policy()
    pol = replace(pol, min_replicas=warm, max_replicas=fleet.peak_instances)
    sim = autoscale.simulate(day, final_rps, pol)
    monthly = sim.instance_hours * final_inst.usd_per_hour * cost.HOURS_PER_MONTH / 24.0
    row = fleet_row("+ autoscaling (simulated diurnal day)", final_inst, final_rps, traffic, headroom, 1,
                    acc.get(inc.variant), src)
    row.monthly_usd, row.fleet_peak = monthly, sim.max_ready
    row.usd_per_million_served = cost.monthly_cost_per_million(monthly, traffic)
    row.kept = monthly < rows[-1].monthly_usd
    row.note = (f"{sim.instance_hours:.1f} vs {sim.always_on_instance_hours:.1f} instance-hours/day "
                f"({sim.idle_saved_fraction:.0%} idle compute saved); {sim.short_minutes} min short of capacity")
    rows.append(row)
    prev = None
    for r in rows:
        r.saving_vs_previous = (1 - r.usd_per_million_served / prev) if prev else 0.0
        if r.kept or prev is None:
            prev = r.usd_per_million_served
    kept_rows = [r for r in rows if r.kept]
    ratio = rows[0].usd_per_million_served / kept_rows[-1].usd_per_million_served
    rec = CampaignRecord(
        model=spec.name, sla_ms=tune.sla_ms, percentile=tune.percentile, traffic=traffic, headroom=headroom,
        catalog={"prices_read": catalog.prices_read, "source": catalog.source}, local_priced_as=local.name, steps=rows,
        baseline_over_optimized=ratio,
        autoscaling=Autoscaling(sim.policy, sim.instance_hours, sim.always_on_instance_hours, sim.idle_saved_fraction,
                                sim.short_minutes, warm, fleet.peak_instances, final_rps, uncached_rps,
                                "synthetic Zipf stream" if c else None, usable, day.tolist(),
                                [x["ready"] for x in sim.timeline][::10]),
        winner=tune.winner, tune_file=src, imports=[str(p) for p in imports],
        tuner={"perf_analyzer_runs": tune.perf_analyzer_runs, "candidates": tune.candidates_measured})
    path = save(rec, results_dir, name=spec.name)
    progress(f"campaign: baseline/optimized cost = {ratio:.2f}x; {path}")
    return path
