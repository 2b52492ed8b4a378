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

from build_engines.records import Record
from build_engines.spec import ModelSpec, load_spec
from perf.measure import analyzer
from perf.cost import autoscale
from perf.cost.cache_replay import CacheReplay, hit_rate_bound, read_request_log, replay
from perf.cost import pricing as cost
from perf.errors import CostError, PerfError
from perf.measure.results import Interval, save
from perf.tuning.tuner import FINAL_STATES, CacheStep, Candidate, Measured, TuneRecord, Tuner, write_winner



HIT_RATES = (0.0, 0.18, 0.5, 0.8)     # the saving is shown at these when no request log gives yours


def cache_stats(url: str, model: str) -> dict[str, int]:
    from clients import TritonClient
    with TritonClient(url, model, "http") as c:
        st = c.statistics()["model_stats"][0]["inference_stats"]
    return {"hits": int(st["cache_hit"]["count"]), "misses": int(st["cache_miss"]["count"])}


def in_winner(stage: str, best: Measured, winner: Measured) -> bool:
    """Whether what ``stage`` chose survives in the tuner's final winner: its batching, its instance
    group, its precision, or (the final round) the whole config."""
    a, w = best.serving, winner.serving
    if stage == "batching":
        return (a.dynamic_batching, a.max_batch_size, a.preferred_batch_sizes, a.max_queue_delay_us) == \
            (w.dynamic_batching, w.max_batch_size, w.preferred_batch_sizes, w.max_queue_delay_us)
    if stage == "instances":
        return (a.instances, a.threads_per_instance) == (w.instances, w.threads_per_instance)
    if stage == "variant":
        return best.variant == winner.variant
    return best.label == winner.label


def cache_step(tuner: Tuner, winner: Measured) -> CacheStep:
    """Triton's response cache on the winner: its throughput when every request hits (perf_analyzer
    sending the held-out samples in turn: after the first pass each is cached), against the winner
    without the cache. What it saves depends on the traffic's hit rate, which only the user's own
    requests tell (``cache_replay``); Triton's statistics confirm the hits."""
    model = tuner.model(winner.variant)
    on = Candidate(winner.variant, replace(winner.serving, response_cache=True))
    all_hit = tuner.measure(on, "cache")
    stats = cache_stats(tuner.http_url, model)
    return CacheStep(all_hit, all_hit.throughput, winner.throughput, stats["hits"], stats["misses"])


def cached_throughput(hit_rate: float, all_hit_rps: float, no_cache_rps: float) -> float:
    """Throughput at a hit rate, from the two measured ends: each request costs a hit's or a miss's time."""
    if all_hit_rps <= 0 or no_cache_rps <= 0:
        return no_cache_rps
    return 1.0 / (hit_rate / all_hit_rps + (1 - hit_rate) / no_cache_rps)


def day_from_trace(path: Path) -> np.ndarray:
    """Hourly request rates of a day from the user's trace: 24 numbers (req/s per hour), one per line."""
    try:
        v = np.loadtxt(path, dtype=float, comments="#").ravel()
    except (OSError, ValueError) as e:
        raise CostError(f"{path}: cannot read the traffic trace ({e}); give 24 lines of req/s, one per hour") from e
    if len(v) != 24 or np.any(v < 0) or not np.all(np.isfinite(v)) or v.sum() == 0:
        raise CostError(f"{path}: a traffic trace is 24 non-negative hourly rates (req/s), not all zero; got {len(v)} values")
    return v


@dataclass(frozen=True)
class CacheOptions:
    """How the request log is replayed: the fleet's replicas (0: the fleet sized before the cache), the
    shared cache's memory, each pod's local cache (Triton's, 64 MB as our servers start it), the TTL
    (None: the spec's [cache] ttl_s)."""

    replicas: int = 0
    shared_memory_mb: int = 256
    pod_memory_mb: int = 64
    ttl_s: float | None = None
    redis_instance: str | None = None          # Redis's own machine (None: the cheapest CPU kind its memory fits)
    redis_price_per_hour: float | None = None  # its price (0: it runs on a machine already paid for)


REDIS_MEMORY_FACTOR = 1.5   # maxmemory bounds the data, not the allocator's fragmentation, client buffers or the process


def redis_machine(catalog: cost.Catalog, options: CacheOptions) -> tuple[cost.Instance | None, str]:
    """The machine the shared cache runs on, and why: the one named (and priced) in ``options``, else the
    cheapest CPU kind in the catalog with REDIS_MEMORY_FACTOR times its memory bound; None where its price
    is given as 0 (a machine already paid for)."""
    if options.redis_price_per_hour == 0:
        return None, "--redis-price-per-hour 0: a machine already paid for"
    if options.redis_instance:
        return catalog.get(options.redis_instance, options.redis_price_per_hour), "given with --redis-instance"
    if options.redis_price_per_hour is not None:
        return cost.Instance("Redis's machine", float(options.redis_price_per_hour)), "given with --redis-price-per-hour"
    need = options.shared_memory_mb * REDIS_MEMORY_FACTOR / 1024
    fits = [i for i in catalog.instances.values() if i.gpus == 0 and i.memory_gib >= need]
    if not fits:
        raise CostError(f"no CPU instance in the catalog has the {need:.1f} GiB a {options.shared_memory_mb} MB Redis "
                        "needs; name one with --redis-instance (and --redis-price-per-hour if it is not listed)")
    best = min(fits, key=lambda i: (i.usd_per_hour, i.memory_gib))
    return best, f"the cheapest catalog CPU kind with >= {need:.2f} GiB ({REDIS_MEMORY_FACTOR:g}x its memory bound)"


@dataclass(frozen=True)
class CacheBill:
    """What the cache rows are priced on: the fleet's instance and per-instance throughput before caching,
    the traffic, and Redis's own machine."""

    instance: cost.Instance
    rps: float
    traffic: cost.Traffic
    headroom: float
    accuracy: float | None
    source: str
    tune: TuneRecord
    redis: cost.Instance | None        # None: on a machine already paid for
    redis_why: str

    def row(self, name: str, rps: float, kept: bool, note: str, redis: bool = False) -> CostRow:
        """A fleet row at ``rps`` per instance; with ``redis``, Redis's machine added to its monthly bill."""
        r = fleet_row(name, self.instance, rps, self.traffic, self.headroom, 1, self.accuracy, self.source, kept, note)
        if redis and r.monthly_usd is not None:
            r.monthly_usd += self.redis_monthly_usd
            r.usd_per_million_served = cost.monthly_cost_per_million(r.monthly_usd, self.traffic)
        return r

    @property
    def redis_monthly_usd(self) -> float:
        return self.redis.usd_per_hour * cost.HOURS_PER_MONTH if self.redis else 0.0

    def redis_priced_as(self) -> str:
        """Redis's machine as the bill has it: kind, price and why (CampaignCache.redis_priced_as)."""
        if self.redis is None:
            return self.redis_why
        return (f"{self.redis.name} at ${self.redis.usd_per_hour:g}/h, ${self.redis_monthly_usd:.0f}/month "
                f"({self.redis_why})")

    def redis_text(self) -> str:
        return ("Redis's own machine priced in: " if self.redis else "Redis's own machine not billed: ") \
            + self.redis_priced_as()


@dataclass(frozen=True)
class CacheOutcome:
    """What the fleet is sized on after the cache rows: a pod's throughput, and the monthly cost they add."""

    rps: float
    extra_monthly_usd: float


def _cache_rows(rows: list[CostRow], rp: CacheReplay, measured_cache: CacheStep | None, cache: CampaignCache | None,
                bill: CacheBill) -> CacheOutcome:
    """The two ways of caching your log: Triton's local cache in each pod, then one shared Redis cache
    in front of the fleet (a hit never reaches a pod: the pods serve the misses, and Redis's machine is
    billed). Each counts its hit rate's lower 95 % bound (cache_replay.hit_rate_bound). The cheaper is kept."""
    before = next(r for r in reversed(rows) if r.kept and r.usd_per_million_served is not None)
    pod = None
    if measured_cache:
        on, off = measured_cache.all_hit_rps, measured_cache.no_cache_rps
        pod_bound = hit_rate_bound(round(rp.per_pod_hit_rate * rp.requests), rp.requests)
        pod_rps = bill.rps * cached_throughput(pod_bound, on, off) / off if off > 0 else bill.rps
        cache.hit_rate, cache.hit_rate_source = rp.per_pod_hit_rate, f"{rp.source}, {rp.replicas} pods"
        pod_kept = pod_rps > bill.rps * 1.02
        pod = bill.row(f"+ response cache per pod (Triton's local cache, hit rate {rp.per_pod_hit_rate:.1%} "
                       f"over {rp.replicas} replicas, from {rp.source})", pod_rps, pod_kept,
                       f"all-hit {on:.0f} vs no-cache {off:.0f} infer/s (measured); each pod sees 1/{rp.replicas} "
                       f"of the requests ({rp.pod_memory_mb} MB each, no TTL); priced at the hit rate's lower 95 % "
                       f"bound, {pod_bound:.1%}" + ("" if pod_kept else "; too few repeats per pod to help: not kept"))
        rows.append(pod)
        if pod_kept:
            before = pod
    shared = bill.row(f"+ shared response cache on Redis (hit rate {rp.shared_hit_rate:.1%}, from {rp.source})",
                      bill.rps / (1.0 - rp.shared_hit_bound), False, "", redis=True)
    tune = bill.tune
    slower = (tune.winner.latency_ms + rp.miss_p99_ms) if tune.winner.latency_ms and rp.miss_p99_ms else None
    fits = slower is None or slower <= tune.sla_ms
    cheaper = shared.usd_per_million_served is not None and \
        shared.usd_per_million_served * 1.02 < before.usd_per_million_served
    shared.kept = fits and cheaper
    if shared.kept and pod is not None and pod.kept:
        pod.kept, pod.note = False, pod.note + "; the shared cache below replaces it: not kept"
    model_ms = f"the model's {tune.percentile} {tune.winner.latency_ms:.2f} ms" if tune.winner.latency_ms else "the model"
    ttl = f"TTL {rp.ttl_s:g} s on the log's clock" if rp.ttl_s is not None else "no timestamps in the log: no TTL applied"
    hit = (f"hit p50 / p99 {rp.hit_p50_ms:.2f} / {rp.hit_p99_ms:.2f} ms (a Redis round trip on loopback)"
           if rp.hit_p99_ms is not None else "no hit in the log: no hit latency")
    miss = f"a miss adds its GET + SET, p99 {rp.miss_p99_ms:.2f} ms" if rp.miss_p99_ms is not None else "no miss timed"
    why = ("" if shared.kept else
           f"; a miss's {tune.percentile} {slower:.2f} ms passes the SLA ({tune.sla_ms:g} ms): not kept" if not fits
           else "; not cheaper than without it" + (" (Redis's machine included)" if bill.redis else "") + ": not kept")
    shared.note = (f"hits answered by Redis before a pod: pods serve the {1 - rp.shared_hit_bound:.1%} that miss at the "
                   f"hit rate's lower 95 % bound ({rp.shared_hit_bound:.1%}); {hit} vs {model_ms}; {miss}; {ttl}; "
                   f"{rp.shared_memory_mb} MB, {rp.shared_evicted} evicted; {bill.redis_text()}" + why)
    rows.append(shared)
    if shared.kept:
        return CacheOutcome(shared.throughput_rps, bill.redis_monthly_usd)
    return CacheOutcome(pod.throughput_rps if pod is not None and pod.kept else bill.rps, 0.0)


@dataclass
class CostRow:
    """One lever of the campaign: its throughput per instance at the SLA, and what that costs."""

    step: str
    instance: str
    usd_per_hour: float
    throughput_rps: float                       # 0: met the SLA at no load measured
    usd_per_million_at_sla_throughput: float | None   # None: misses the SLA, not priced
    fleet_peak: int | None
    monthly_usd: float | None
    usd_per_million_served: float | None
    accuracy: float | None
    source: str
    kept: bool = True
    note: str = ""
    saving_vs_previous: float = 0.0


@dataclass
class Autoscaling:
    """The simulated day against the sized fleet (and what the manifests are sized from)."""

    policy: autoscale.Policy
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


@dataclass
class HitRateRow:
    """The winner's bill at one hit rate: Triton's cache in each pod, and one shared cache in front."""

    hit_rate: float
    throughput_rps: float
    usd_per_million_served: float | None
    saving: float | None
    shared_throughput_rps: float
    shared_saving: float | None


@dataclass
class CampaignCache:
    """The response cache in the campaign: the two measured ends, the saving by hit rate, and your hit
    rate per pod where a request log gave it."""

    all_hit_rps: float
    no_cache_rps: float
    by_hit_rate: list[HitRateRow]
    hit_rate: float | None
    hit_rate_source: str | None
    server_hits: int | None
    server_misses: int | None
    redis_priced_as: str = ""      # the shared cache's own machine, billed in its rows: kind, price, why


@dataclass(kw_only=True)
class CampaignRecord(Record):
    """`make report`: each lever's measured or simulated effect on the cost per request."""

    KIND: ClassVar[str] = "campaign"
    SCHEMA: ClassVar[int] = 4          # 4: cache_replay (your request log through per-pod and shared caches);
                                       # 3: its winner (a tune Measured) has no repeats field
    WRITER: ClassVar[str] = "make report"
    model: str
    sla_ms: float
    percentile: str
    traffic: cost.Traffic
    headroom: float
    catalog: cost.CatalogRef
    local_priced_as: str
    priced_why: str                # how this machine's instance kind was chosen
    steps: list[CostRow]
    baseline_over_optimized: float      # the composed bill: measured levers, fleet rounding, simulated autoscaling
    verified: Interval | None           # tuned/baseline throughput on one machine, interleaved (measured)
    autoscaling: Autoscaling
    winner: Measured
    tune_file: str
    imports: list[str]
    tuner: dict
    cache: CampaignCache | None    # all-hit and no-cache throughput, the saving by hit rate, yours if given
    day_source: str                # what the autoscaling day was simulated from
    accuracy_metric: str           # top1 (percent) or embedding (mean cosine vs FP32)
    cache_replay: CacheReplay | None = None   # your request log through per-pod caches and one shared Redis cache


def fleet_row(name: str, instance: cost.Instance, rps: float, traffic: cost.Traffic, headroom: float, min_warm: int,
              accuracy: float | None, source: str, kept: bool = True, note: str = "") -> CostRow:
    if rps <= 0:          # no price for what cannot serve at the SLA
        return CostRow(name, instance.name, instance.usd_per_hour, 0.0, None, None, None, None, accuracy, source, False,
                       "misses the SLA at every load measured: not priced" + (f"; {note}" if note else ""))
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
        instance: str | None = None, price_per_hour: float | None = None, headroom: float = 0.2,
        policy: autoscale.Policy | None = None, imports: Sequence[Path] = (), settings: analyzer.PerfSettings | None = None,
        progress: Callable[[str], None] = print, results_dir: Path | None = None, request_log: Path | None = None,
        traffic_trace: Path | None = None, cache_options: "CacheOptions | None" = None) -> Path:
    from build_engines.pipeline import ensure_published
    from clients import LocalTriton

    spec = load_spec(model)
    if any(t.dtype == "string" for t in spec.inputs):
        raise PerfError(f"{model}'s served inputs are strings: the campaign tunes the tensor model behind them; "
                        f"give that model's spec")
    if request_log:                               # a bad file fails now, not after the measurements
        read_request_log(request_log, {t.name: np.dtype(t.dtype) for t in spec.inputs}, spec.cache.ignore_inputs)
    if traffic_trace:
        day_from_trace(traffic_trace)
    catalog = cost.load_catalog()
    if instance:
        catalog.get(instance, price_per_hour)          # an unknown kind fails now, not after the measurements
    if request_log:
        redis_machine(catalog, cache_options or CacheOptions())   # so does a Redis no catalog kind fits
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
        tune = tuner.run()
        winner = tuner.winner
        tune.verified = tuner.verify()
        tune.cache = cache_step(tuner, winner)
        # what an instance must hold: the server and its stubs after the heaviest loads, + 1 GiB for the OS
        tune.server_memory_gib = srv.rss_gib()
        local, why = catalog.this_machine(instance, price_per_hour, memory_gib=tune.server_memory_gib + 1.0)
        tune.instance, tune.priced_why = local.name, why
        tune.run_id, tune.machine_note, tune.server_url = run_id, f"this machine, priced as {local.name}", srv.http_url
        tune_path = save(tune, results_dir, name=spec.name)
    cfg_path = write_winner(repository, tuner.model(winner.candidate.variant), winner.candidate.serving)
    progress(f"tuned config written: {cfg_path}")
    return build_campaign(spec, tune_path, traffic, local, headroom, policy, imports, acc, results_dir, progress,
                          priced_why=why, request_log=request_log, traffic_trace=traffic_trace,
                          cache_options=cache_options)


def build_campaign(spec: ModelSpec, tune_path: Path, traffic: cost.Traffic, local: cost.Instance, headroom: float,
                   policy: autoscale.Policy | None, imports: Sequence[Path], acc: dict, results_dir: Path | None,
                   progress: Callable[[str], None] = print, priced_why: str = "given", request_log: Path | None = None,
                   traffic_trace: Path | None = None, cache_options: "CacheOptions | None" = None) -> Path:
    """Compose the levers from the measured tune file (and imported ones) into the campaign file."""
    tune = TuneRecord.read(tune_path)
    cache_options = cache_options or CacheOptions()
    if traffic_trace:                     # the user's day: its volume and shape replace the given traffic
        day = day_from_trace(traffic_trace)
        traffic = cost.Traffic(float(day.mean() * 86400), float(day.max() / day.mean()))
        day_source = f"your traffic trace {Path(traffic_trace).name} (24 hourly rates)"
    else:
        day = autoscale.diurnal_profile(traffic.average_rps, traffic.peak_to_average)
        day_source = (f"a synthetic diurnal curve (peak/average {traffic.peak_to_average:g}); give your own day "
                      "with --traffic-trace")
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
        picked = tune.stage_winners["precision"].variant == "int8"   # the precision stage's pick
        kept = picked and tune.winner.variant == "int8"              # kept: INT8 is what the tuner serves in the end
        note = ("" if kept else "measured, not >= 2 % faster than FP32 here: not kept" if not picked and q.throughput > 0
                else "picked by the precision stage, replaced by FP32 on the tuned config: not kept" if picked else "")
        rows.append(fleet_row("+ INT8 quantization", local, q.throughput, traffic, headroom, 1, acc.get("int8"),
                              src, kept, note))
        inc = q if picked else inc
    labels = {"batching": "+ dynamic batching (tuned)", "instances": "+ instance group (tuned)",
              "variant": "+ the other precision on the tuned config", "final": "+ final round head to head"}
    unknown = sorted(set(tune.stage_winners) - set(labels) - {"precision"})
    if unknown:
        raise CostError(f"{src}: stage {', '.join(unknown)} is not one this version's tuner runs: "
                        "run `make tune` again")
    if "final" in tune.stage_winners and tune.final_round not in FINAL_STATES:
        raise CostError(f"{src}: final_round {tune.final_round!r} is none of {sorted(FINAL_STATES)}: "
                        "not a record this version wrote; run `make tune` again")
    for stage, label in ((s, labels[s]) for s in tune.stage_winners if s in labels):   # in the tuner's order
        best = tune.stage_winners[stage]      # the tuner's incumbent after this stage
        changed = best.label != inc.label
        kept = changed and in_winner(stage, best, tune.winner)    # kept: what it chose is what is served
        tried = tune.stage(stage)
        what = (FINAL_STATES[tune.final_round] if stage == "final" else
                f"{len(tried)} config{'s' if len(tried) != 1 else ''} measured")
        # not kept: the row shows the best this stage measured (as the INT8 row does), not the incumbent again
        shown = best if changed or not tried else max(tried, key=lambda m: m.capacity)
        why = ("" if kept else "; beat the previous step, but a later step replaced it: not kept" if changed
               else "; none beat the previous step: not kept")
        rows.append(fleet_row(label + f": {shown.label}", local, shown.throughput, traffic, headroom, 1,
                              acc.get(shown.variant), src, kept, what + why))
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
    cache = None
    if c or request_log:                   # Redis's machine is only looked for where a cache is priced
        bill = CacheBill(final_inst, final_rps, traffic, headroom, acc.get(inc.variant), src, tune,
                         *redis_machine(catalog, cache_options))
    if c:
        on, off = c.all_hit_rps, c.no_cache_rps
        base_usd = next(r.usd_per_million_served for r in reversed(rows) if r.kept)
        table = []
        for h in HIT_RATES:
            rps = final_rps * cached_throughput(h, on, off) / off if off > 0 else final_rps
            r = fleet_row("", final_inst, rps, traffic, headroom, 1, None, src)
            shared = bill.row("", final_rps / (1 - h), True, "", redis=True)    # h < 1 here; Redis's machine billed
            table.append(HitRateRow(h, rps, r.usd_per_million_served,
                                    1 - r.usd_per_million_served / base_usd if r.usd_per_million_served else None,
                                    shared.throughput_rps,
                                    1 - shared.usd_per_million_served / base_usd if shared.usd_per_million_served else None))
        cache = CampaignCache(on, off, table, None, None, c.server_hits, c.server_misses, bill.redis_priced_as())
        measured = f"all-hit {on:.0f} vs no-cache {off:.0f} infer/s (measured)"
        if not request_log:
            rows.append(fleet_row("+ response cache (hit rate unknown)", final_inst, final_rps, traffic, headroom, 1,
                                  acc.get(inc.variant), src, False,
                                  measured + "; what it saves depends on your hit rate: see the table by hit rate, "
                                  "or give --request-log; not counted here"))
    replayed, extra_monthly = None, 0.0
    if request_log:
        replicas = cache_options.replicas or rows[-1].fleet_peak or 1
        progress(f"replaying {request_log} through {replicas} per-pod caches and one shared Redis cache")
        replayed = replay(request_log, spec, replicas, cache_options.shared_memory_mb, cache_options.pod_memory_mb,
                          cache_options.ttl_s)
        out = _cache_rows(rows, replayed, c, cache, bill)
        final_rps, extra_monthly = out.rps, out.extra_monthly_usd
    # autoscaling: a simulated diurnal day against the sized fleet
    fleet = cost.size_fleet(final_inst, final_rps, traffic, headroom, 1)
    usable = fleet.usable_rps
    warm = max(1, math.ceil(day.min() / usable))
    pol = policy or autoscale.Policy()
    pol = replace(pol, min_replicas=warm, max_replicas=fleet.peak_instances)
    sim = autoscale.simulate(day, final_rps, pol)
    monthly = sim.instance_hours * final_inst.usd_per_hour * cost.HOURS_PER_MONTH / 24.0 + extra_monthly
    row = fleet_row("+ autoscaling (simulated day" + (", your trace)" if traffic_trace else ", synthetic curve)"),
                    final_inst, final_rps, traffic, headroom, 1,
                    acc.get(inc.variant), src)
    row.monthly_usd, row.fleet_peak = monthly, sim.max_ready
    row.usd_per_million_served = cost.monthly_cost_per_million(monthly, traffic)
    row.kept = monthly < next(r.monthly_usd for r in reversed(rows) if r.monthly_usd is not None)
    row.note = (f"{sim.instance_hours:.1f} vs {sim.always_on_instance_hours:.1f} instance-hours/day "
                f"({sim.idle_saved_fraction:.0%} idle compute saved); {sim.short_minutes} min short of capacity"
                + (f"; Redis's machine ${extra_monthly:.0f}/month included" if extra_monthly else ""))
    rows.append(row)
    prev = None
    for r in rows:
        if r.usd_per_million_served is None:
            continue
        r.saving_vs_previous = (1 - r.usd_per_million_served / prev) if prev else 0.0
        if r.kept or prev is None:
            prev = r.usd_per_million_served
    kept_rows = [r for r in rows if r.kept]
    ratio = rows[0].usd_per_million_served / kept_rows[-1].usd_per_million_served
    rec = CampaignRecord(
        model=spec.name, sla_ms=tune.sla_ms, percentile=tune.percentile, traffic=traffic, headroom=headroom,
        catalog=catalog.ref(), local_priced_as=local.name,
        priced_why=priced_why, steps=rows,
        baseline_over_optimized=ratio, verified=tune.verified.tuned_over_baseline if tune.verified else None,
        autoscaling=Autoscaling(sim.policy, sim.instance_hours, sim.always_on_instance_hours, sim.idle_saved_fraction,
                                sim.short_minutes, warm, fleet.peak_instances, final_rps, uncached_rps,
                                replayed.source if replayed else None, usable, day.tolist(),
                                [x["ready"] for x in sim.timeline][::10]),
        winner=tune.winner, tune_file=src, imports=[str(p) for p in imports], cache=cache, day_source=day_source,
        accuracy_metric=spec.metric, cache_replay=replayed,
        tuner={"perf_analyzer_runs": tune.perf_analyzer_runs, "candidates": tune.candidates_measured})
    path = save(rec, results_dir, name=spec.name)
    progress(f"campaign: baseline/optimized cost = {ratio:.2f}x; {path}")
    return path
