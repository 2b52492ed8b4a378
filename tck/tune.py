"""Tuning, cost, campaign and Kubernetes manifest commands."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from tck.measure import _say, may_record
from tck.paths import DEFAULT_BUILD, DEFAULT_REPO, WORK_DIR


def _traffic(a):
    from perf.cost.pricing import Traffic
    return Traffic(a.requests_per_day, a.peak_to_average)


def _policy(a):
    from perf.cost.autoscale import Policy
    return Policy(target_utilization=a.target_utilization, cold_start_s=a.cold_start_s,
                  scale_down_delay_s=a.scale_down_delay_s)


def load_spec_of(a):
    from build_engines.spec import load_spec
    return load_spec(a.model)


def _sla(a) -> None:
    """--sla-ms, else the spec's own [extra] sla_ms, else 10 ms."""
    if a.sla_ms is None:
        from build_engines.spec import load_spec
        a.sla_ms = float(load_spec(a.model).extra.get("sla_ms", 10.0))


def _cache_options(a):
    from perf.cost.campaign import CacheOptions
    from perf.errors import BadSettings
    if a.cache_replicas < 0 or a.cache_memory_mb < 1 or a.pod_cache_mb < 1 or (a.cache_ttl_s is not None and a.cache_ttl_s <= 0) \
            or (a.redis_price_per_hour is not None and a.redis_price_per_hour < 0):
        raise BadSettings("--cache-replicas >= 0, --cache-memory-mb and --pod-cache-mb >= 1, --cache-ttl-s > 0, "
                          "--redis-price-per-hour >= 0")
    return CacheOptions(a.cache_replicas, a.cache_memory_mb, a.pod_cache_mb, a.cache_ttl_s, a.redis_instance,
                        a.redis_price_per_hour)


def cmd_campaign(a) -> int:
    _sla(a)
    from perf.cost import campaign
    from perf.cost import pricing as cost
    from perf.reports.report import campaign_report
    if a.from_tune:
        # Re-compose from a measured tune file (e.g. after importing other kinds): no new measurement.
        from build_engines.spec import load_spec
        from perf.tuning.tuner import TuneRecord
        spec = load_spec(a.model)
        tune = TuneRecord.read(a.from_tune)
        mem = tune.server_memory_gib + 1.0 if tune.server_memory_gib is not None else None
        local, why = cost.load_catalog().this_machine(a.instance or (tune.instance if not a.price_per_hour else None),
                                                      a.price_per_hour, memory_gib=mem)
        path = campaign.build_campaign(spec, a.from_tune, _traffic(a), local, a.headroom, _policy(a), a.imports,
                                       campaign.accuracies(a.build_dir, spec), None, _say, priced_why=why,
                                       request_log=a.request_log, traffic_trace=a.traffic_trace,
                                       cache_options=_cache_options(a))
    else:
        path = campaign.run(a.model, a.sla_ms, a.repository, a.build_dir, _traffic(a), a.percentile, a.instance,
                            a.price_per_hour, a.headroom, _policy(a), a.imports, progress=_say,
                            request_log=a.request_log, traffic_trace=a.traffic_trace,
                            cache_options=_cache_options(a))
    out = campaign_report(path)
    if a.record and may_record(load_spec_of(a)):
        from perf.reports.records import record_campaign, render_readme
        _say(f"record: {record_campaign(campaign.CampaignRecord.read(path))}; README "
             f"{'updated' if render_readme() else 'unchanged'}")
    _say(f"report: PASSED; {out}")
    print(out)
    return 0


def _record_fleet(spec, write) -> None:
    """records/ and the README's figures from ``write()`` for the project's own fleet only (says so when skipped)."""
    from perf.reports.records import is_project_fleet, render_readme
    if is_project_fleet(spec.path, [m.spec.path for m in spec.members]):
        _say(f"record: {write()}; README {'updated' if render_readme() else 'unchanged'}")
    else:
        _say(f"record: skipped: {spec.path} is not the project's own fleet; records/ and README.md keep the "
             "project's own figures, your results are under results/")


def cmd_fleet(a) -> int:
    """`make report FLEET=...`: the fleet's models measured together and priced packed vs one per machine."""
    from perf.cost import fleet
    from perf.cost.fleet_spec import load_fleet
    from perf.measure.analyzer import PerfSettings
    from perf.reports.fleet_report import fleet_report
    spec = load_fleet(a.fleet)                        # a bad fleet spec fails here, before any build
    if a.rounds is not None:
        if a.rounds < 1:
            from perf.errors import BadSettings
            raise BadSettings(f"--rounds must be >= 1, got {a.rounds}")
        spec = replace(spec, rounds=a.rounds)
    path = fleet.run(spec, a.repository, a.build_dir, PerfSettings(measurement_interval_ms=a.window_ms),
                     _policy(a), progress=_say, together=a.together)
    out = fleet_report(path)
    if a.record:
        from perf.reports.records import record_fleet
        _record_fleet(spec, lambda: record_fleet(fleet.FleetRecord.read(path)))
    _say(f"report: PASSED; {out}")
    print(out)
    return 0


def cmd_bench_fleet_peer(a) -> int:
    """Our packed pick (the newest fleet results) against Model Analyzer's concurrent mode, head to head."""
    from perf.cost import fleet_peer
    from perf.cost.fleet_spec import load_fleet
    from perf.measure.analyzer import PerfSettings
    spec = load_fleet(a.fleet)
    path = fleet_peer.run(spec, a.repository, a.build_dir, WORK_DIR, PerfSettings(measurement_interval_ms=a.window_ms),
                          a.rounds, a.max_instances, a.max_concurrency, a.peer_from, f"make bench-fleet-peer FLEET={a.fleet}",
                          progress=_say)
    doc = fleet_peer.FleetPeerRecord.read(path)
    if a.record:
        from perf.reports.records import record_fleet_peer
        _record_fleet(spec, lambda: record_fleet_peer(doc))
    _say(f"bench-fleet-peer: the whole mix's capacity, ours / Model Analyzer's concurrent pick = "
         f"{doc.ours_over_peer.text() if doc.ours_over_peer else 'no paired round'} ({doc.rounds} rounds in turn); {path}")
    print(path)
    return 0


def cmd_tune(a) -> int:
    _sla(a)
    from build_engines.spec import load_spec
    from clients import LocalTriton
    from build_engines.pipeline import ensure_published
    from perf.measure.results import save
    from perf.measure.analyzer import PerfSettings
    from perf.measure.inputs import input_data_for
    from perf.tuning.tuner import Tuner, write_winner
    ensure_published(a.model, a.repository, a.build_dir, progress=_say)
    spec = load_spec(a.model)
    s = PerfSettings(measurement_interval_ms=1000, input_data=str(input_data_for(spec, WORK_DIR)))
    with LocalTriton(a.repository, model_control="explicit") as srv:
        t = Tuner(srv.http_url, srv.grpc_url, a.repository, spec, a.sla_ms, a.percentile, settings=s, progress=_say)
        res = t.run()
        res.server_memory_gib = srv.rss_gib()
    from perf.cost import pricing as cost
    inst, res.priced_why = cost.load_catalog().this_machine(a.instance, None, memory_gib=res.server_memory_gib + 1.0)
    res.instance = inst.name
    win = res.winner
    cfg = write_winner(a.repository, t.model(win.variant), win.serving)
    path = save(res, name=spec.name)
    _say(f"tune: PASSED; winner {win.label} ({win.throughput:.0f} infer/s); config {cfg}")
    print(path)
    return 0


def cmd_cost(a) -> int:
    """Cost per request and fleet for a given throughput (no measurement)."""
    from perf.cost import pricing as cost
    inst, why = cost.load_catalog().this_machine(a.instance, a.price_per_hour)
    fs = cost.size_fleet(inst, a.throughput_rps, _traffic(a), a.headroom, a.min_warm)
    print(json.dumps({"instance": inst.name, "priced_as": why, "usd_per_hour": inst.usd_per_hour,
                      "usd_per_request": cost.cost_per_request(inst.usd_per_hour, a.throughput_rps),
                      "usd_per_million": cost.cost_per_million(inst.usd_per_hour, a.throughput_rps),
                      "fleet": fs.__dict__}, indent=1))
    return 0


def cmd_bench_tuner(a) -> int:
    """Tuner efficiency: the pruned tuner vs the full grid, measured in one server session."""
    _sla(a)
    from build_engines.spec import load_spec
    from clients import LocalTriton
    from build_engines.pipeline import ensure_published
    from perf.measure.results import save
    from perf.tuning.tuner import BenchTunerRecord, GridSide, HeadToHeadRow, Tuner, TunerSide, grid
    from perf.measure.analyzer import PerfSettings
    ensure_published(a.model, a.repository, a.build_dir, progress=_say)
    spec = load_spec(a.model)
    from perf.measure.inputs import input_data_for
    # one setting for both, so the comparison is fair; real held-out samples
    same = PerfSettings(measurement_interval_ms=700, input_data=str(input_data_for(spec, WORK_DIR)))
    import time
    from perf.measure import replicates
    with LocalTriton(a.repository, model_control="explicit") as srv:
        t = Tuner(srv.http_url, srv.grpc_url, a.repository, spec, a.sla_ms, a.percentile, settings=same, progress=_say)
        t0 = time.perf_counter()
        res = t.run()
        tuner_s = time.perf_counter() - t0
        # the grid: every config the tuner can pick, each measured as a brute search does (concurrency
        # 1, 2, 4, ... until the SLA is missed, then refined), no pruning, no warm start, no prediction
        g = Tuner(srv.http_url, srv.grpc_url, a.repository, spec, a.sla_ms, a.percentile, settings=same, progress=_say,
                  predict=False, repeats=0)       # once each, as a brute search measures
        t0 = time.perf_counter()
        sats = {v: t.saturation(v)["saturation_batch"] for v in ("fp32", "int8")}
        for cand in grid(spec, ("fp32", "int8"), a.sla_ms, sats, range(1, t.max_instances + 1)):
            g.measure(cand, "grid")
        grid_s = time.perf_counter() - t0
        # judged fairly: the pick and the grid's top three in turn, each round scored at the SLA (a frontier
        # search from its concurrency), so a config is never credited with throughput served past the SLA
        top = [m for m in sorted(g.measured, key=lambda m: -m.capacity) if m.meets_sla][:3]
        if not top or not res.winner.meets_sla:
            from perf.errors import SlaUnmet
            raise SlaUnmet(f"no grid config meets {a.percentile} <= {a.sla_ms:g} ms: nothing to judge the tuner against; "
                           "relax the SLA")
        contenders = {"pick": res.winner} | {f"grid #{i + 1}": m for i, m in enumerate(top)
                                             if m.candidate != res.winner.candidate}
        if len(contenders) == 1:
            from perf.errors import SlaUnmet
            raise SlaUnmet(f"the pick is the only grid config that meets {a.percentile} <= {a.sla_ms:g} ms: it is the "
                           "grid's best by construction, there is nothing to measure it against; relax the SLA")
        _say(f"head to head: the pick and the grid's top {len(top)}, {a.rounds} rounds in turn")
        # finer than the tuner's own search (refined to loads < 1.25x apart): the judge's time is not counted
        pts = replicates.interleaved_at_sla(srv.http_url, srv.grpc_url, a.repository,
                                            {k: (t.model(m.variant), m.serving) for k, m in contenders.items()},
                                            {k: m.concurrency for k, m in contenders.items()}, same, t.sla,
                                            a.rounds, 1.25, _say, t.max_concurrency)
    h2h = replicates.capacities(pts)
    # the best of the others by median: pick / it > 1 means the pick beat every grid config head to head
    import numpy as np
    best = max((k for k in h2h if k != "pick"), key=lambda k: float(np.median(h2h[k])))
    quality = replicates.ratio(h2h, "pick", best)
    doc = BenchTunerRecord(
        model=spec.name, sla_ms=a.sla_ms, percentile=t.percentile,
        tuner=TunerSide(res.perf_analyzer_runs, res.candidates_measured, res.winner.label, res.winner.throughput,
                        res.winner.capacity, tuner_s, res.final_round),
        grid=GridSide(sum(m.runs for m in g.measured), len(g.measured), grid_s, [m.label for m in top], g.measured),
        head_to_head={k: HeadToHeadRow(m.label, m.concurrency, h2h[k], [s.throughput for s in pts[k]],
                                       [s.concurrency for s in pts[k]], [s.latency_ms for s in pts[k]])
                      for k, m in contenders.items()}, best=best,
        quality=quality, measured_share=tuner_s / grid_s, command=f"make bench-tuner MODEL={spec.name} SLA_MS={a.sla_ms:g}")
    path = save(doc, name=spec.name)
    if a.record and may_record(spec):
        from perf.reports.records import record_bench_tuner, render_readme
        _say(f"record: {record_bench_tuner(BenchTunerRecord.read(path))}; README "
             f"{'updated' if render_readme() else 'unchanged'}")
    _say(f"tuner: {res.candidates_measured} configs in {tuner_s:.0f} s; grid: {len(g.measured)} configs in {grid_s:.0f} s "
         f"(measured share {doc.measured_share:.1%}); head to head ({a.rounds} rounds in turn): pick / the best grid "
         f"config other than it ({best}) = {quality.text()}")
    print(path)
    return 0


def cmd_bench_peer(a) -> int:
    """The tuner twice and Model Analyzer on one model and SLA, judged head to head (perf.tuning.peer_bench)."""
    _sla(a)
    import functools
    from build_engines.pipeline import ensure_published
    from build_engines.spec import load_spec
    from clients import LocalTriton
    from perf.measure.analyzer import PerfSettings
    from perf.measure.frontier import Sla
    from perf.measure.inputs import input_data_for
    from perf.measure.results import save
    from perf.tuning import peer_bench
    from perf.tuning.judge import edge_ratios
    from perf.tuning.peer import PeerRunRecord
    from perf.tuning.peer_bench import OURS, PEER
    earlier = PeerRunRecord.read(a.peer_from) if a.peer_from else None    # a wrong file fails before any build
    ensure_published(a.model, a.repository, a.build_dir, progress=_say)
    spec = load_spec(a.model)
    settings = PerfSettings(measurement_interval_ms=1000, input_data=str(input_data_for(spec, WORK_DIR)))
    doc = peer_bench.run(functools.partial(LocalTriton, a.repository, model_control="explicit"), a.repository, spec,
                         Sla(a.sla_ms, a.percentile), settings, WORK_DIR / f"model-analyzer-{spec.name}",
                         rounds=peer_bench.ROUNDS if a.rounds is None else a.rounds, progress=_say, earlier=earlier)
    path = save(doc, name=spec.name)
    if a.record and may_record(spec):
        from perf.reports.records import record_bench_peer, render_readme
        _say(f"record: {record_bench_peer(peer_bench.PeerBenchRecord.read(path))}; README "
             f"{'updated' if render_readme() else 'unchanged'}")
    agree = "the same config" if doc.picks_agree else ("different configs within noise" if doc.within_noise
                                                        else "different configs, one better")
    _say(f"bench-peer: tuner twice: {agree}; Model Analyzer {doc.peer.configs_measured} configs in "
         f"{doc.peer.seconds:.0f} s, the tuner {doc.measured_share:.0%} of that; ours / Model Analyzer's: "
         + "; ".join(f"{j.design.name} {doc.ratio_text(j)} (at the SLA edge, interpolated: "
                     + (r.text() if (r := edge_ratios(j, doc.sla_ms).get(f"{OURS} / {PEER}")) else "none") + ")"
                     for j in doc.judged))
    print(path)
    return 0


def _common(s, sla=True):
    s.add_argument("--model", default="digits")
    if sla:
        s.add_argument("--sla-ms", type=float, default=None, help="default: the spec's [extra] sla_ms, else 10")
        s.add_argument("--percentile", default="p99", choices=("p50", "p90", "p95", "p99"))
    s.add_argument("--repository", type=Path, default=DEFAULT_REPO)
    s.add_argument("--build-dir", type=Path, default=DEFAULT_BUILD)


def _cost_opts(s):
    s.add_argument("--instance", default=None, help="catalog kind this machine is priced as, or any name with "
                   "--price-per-hour (default: the cheapest kind with this machine's cores and the models' memory)")
    s.add_argument("--price-per-hour", type=float, default=None)
    s.add_argument("--requests-per-day", type=float, default=1e9)
    s.add_argument("--peak-to-average", type=float, default=3.0)
    s.add_argument("--headroom", type=float, default=0.2)


def add_commands(sub) -> None:
    s = sub.add_parser("campaign", help="`make report`: tune + levers + cost report")
    _common(s)
    _cost_opts(s)
    s.add_argument("--target-utilization", type=float, default=0.7)
    s.add_argument("--cold-start-s", type=float, default=120.0)
    s.add_argument("--scale-down-delay-s", type=float, default=600.0)
    s.add_argument("--import", dest="imports", type=Path, action="append", default=[],
                   help="a tune results file measured on another instance kind (for right-sizing)")
    s.add_argument("--from-tune", type=Path, default=None, help="re-compose the campaign from this tune file, no measuring")
    s.add_argument("--request-log", type=Path, default=None,
                   help="your requests, one per line: KEY, 'T KEY' (T in seconds) or JSON {\"t\": T, \"inputs\": {...}}; "
                        "replayed through per-pod caches and one shared Redis cache, the measured hit rates priced")
    s.add_argument("--cache-replicas", type=int, default=0, help="replicas the log is spread over (0: the sized fleet)")
    s.add_argument("--cache-memory-mb", type=int, default=256, help="the shared Redis cache's memory bound")
    s.add_argument("--pod-cache-mb", type=int, default=64, help="each pod's local response cache (Triton's)")
    s.add_argument("--cache-ttl-s", type=float, default=None, help="the shared cache's TTL (default: the spec's [cache] ttl_s)")
    s.add_argument("--redis-instance", default=None,
                   help="the catalog kind the shared Redis runs on, billed in its rows (default: the cheapest CPU kind "
                        "with 1.5x --cache-memory-mb)")
    s.add_argument("--redis-price-per-hour", type=float, default=None,
                   help="Redis's machine's price (0: it runs on a machine already paid for)")
    s.add_argument("--record", action="store_true", help="also write records/campaign-<model>.json and the README table")
    s.add_argument("--traffic-trace", type=Path, default=None,
                   help="your day: 24 lines of req/s, one per hour (volume and shape for sizing and autoscaling)")
    s.set_defaults(fn=cmd_campaign)

    s = sub.add_parser("fleet", help="`make report FLEET=`: several models measured together, packed vs one per machine")
    s.add_argument("--fleet", type=Path, required=True, help="the fleet spec (TOML: [[model]] spec, traffic, SLA)")
    s.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default: the fleet spec's rounds)")
    s.add_argument("--window-ms", type=int, default=1000, help="perf_analyzer's measurement window")
    s.add_argument("--record", action="store_true", help="the project's own fleet: also records/fleet-<name>.json "
                                                          "and the README's figures")
    s.add_argument("--no-together", dest="together", action="store_false",
                   help="measure each set with the configs as tuned alone (no co-location tune)")
    s.add_argument("--repository", type=Path, default=DEFAULT_REPO)
    s.add_argument("--build-dir", type=Path, default=DEFAULT_BUILD)
    s.add_argument("--target-utilization", type=float, default=0.7)
    s.add_argument("--cold-start-s", type=float, default=120.0)
    s.add_argument("--scale-down-delay-s", type=float, default=600.0)
    s.set_defaults(fn=cmd_fleet)

    s = sub.add_parser("bench-fleet-peer", help="the fleet's packed pick vs Model Analyzer's concurrent mode -> results/")
    s.add_argument("--fleet", type=Path, required=True)
    s.add_argument("--rounds", type=int, default=4, help="head-to-head rounds (A B, B A, ...)")
    s.add_argument("--window-ms", type=int, default=1000)
    s.add_argument("--max-instances", type=int, default=2, help="Model Analyzer's instance search bound per model")
    s.add_argument("--max-concurrency", type=int, default=16, help="Model Analyzer's concurrency search bound")
    s.add_argument("--peer-from", type=Path, default=None, help="a finished Model Analyzer work folder: judge it again")
    s.add_argument("--record", action="store_true", help="the project's own fleet: records/bench-fleet-peer-<name>.json")
    s.add_argument("--repository", type=Path, default=DEFAULT_REPO)
    s.add_argument("--build-dir", type=Path, default=DEFAULT_BUILD)
    s.set_defaults(fn=cmd_bench_fleet_peer)

    s = sub.add_parser("tune", help="tune batching/instances/precision under an SLA; writes the winning config.pbtxt")
    _common(s)
    s.add_argument("--instance", default=None, help="the kind these throughputs are priced as (default: matched)")
    s.set_defaults(fn=cmd_tune)

    s = sub.add_parser("cost", help="cost per request and fleet size for a throughput")
    _cost_opts(s)
    s.add_argument("--throughput-rps", type=float, required=True)
    s.add_argument("--min-warm", type=int, default=1)
    s.set_defaults(fn=cmd_cost)

    s = sub.add_parser("bench-tuner", help="tuner efficiency vs the full grid -> results/")
    _common(s)
    s.add_argument("--rounds", type=int, default=9, help="head-to-head rounds of the pick and the grid's top three")
    s.add_argument("--record", action="store_true", help="also write records/bench-tuner-<model>.json and the README")
    s.set_defaults(fn=cmd_bench_tuner)

    s = sub.add_parser("bench-peer", help="the tuner twice and Model Analyzer's brute search, judged head to head -> results/")
    _common(s)
    s.add_argument("--rounds", type=int, default=None,
                   help="rounds per judge design (A B, B A, ...; default perf.tuning.peer_bench.ROUNDS)")
    s.add_argument("--peer-from", type=Path, default=None,
                   help="a results/peer-run-*.json: judge that Model Analyzer search again (no new search)")
    s.add_argument("--record", action="store_true", help="also write records/bench-peer-<model>.json and the README")
    s.set_defaults(fn=cmd_bench_peer)

    add_manifest_command(sub)


def cmd_manifests(a) -> int:
    from perf.deploy import kubernetes as deploy
    from perf.errors import NoResults
    from perf.cost.campaign import CampaignRecord
    from perf.measure.results import RESULTS_DIR, latest, load_all
    camp = a.campaign
    if camp is None:
        doc = latest(load_all(CampaignRecord, RESULTS_DIR, model=a.model_name))
        if doc is None:
            raise NoResults(f"no campaign results for {a.model_name} in {RESULTS_DIR}; run `make report "
                            f"MODEL={a.model}` first")
        camp = doc.path
    sizing = deploy.sizing_from_campaign(camp, a.instance, a.throughput_from)
    models = [f"{a.model_name}_{v}" for v in a.variants.split(",")] if a.variants else None
    allow = tuple(n.strip() for n in a.allow_from.split(",") if n.strip())
    a.k8s_version = a.k8s_version or deploy.K8S_VERSION
    cache = None
    if a.redis_url:
        pairs = [p.split("=", 1) for p in a.redis_selector.split(",") if p.strip()]
        if not pairs or any(len(p) != 2 or not p[0] or not p[1] for p in pairs):
            raise deploy.DeployError(f"--redis-selector {a.redis_selector!r}: give the Redis pods' labels as KEY=VALUE,...")
        cache = deploy.CacheTarget(a.redis_url, tuple((k, v) for k, v in pairs), a.redis_namespace)
    m = deploy.render(a.model_name, sizing, a.repository_url, a.image or deploy.TRITON_IMAGE,
                      a.namespace or deploy.DEFAULT_NAMESPACE, models, a.image_digest, allow, a.prometheus_namespace,
                      cache)
    out = deploy.write(m, a.out / a.model_name, a.k8s_version)
    _say(f"manifests: PASSED; {len(m)} files valid for Kubernetes {a.k8s_version} in {out} "
         f"(replicas {sizing.min_replicas}..{sizing.max_replicas} x {sizing.instance.name}, "
         f"HPA target {sizing.target_pending_per_pod} pending requests/pod; sizing: {sizing.source})")
    print(out)
    return 0


def cmd_fleet_manifests(a) -> int:
    """The chosen packing of the newest fleet results: one Deployment per machine group, its models loaded."""
    from perf.cost.fleet import newest
    from perf.deploy import kubernetes as deploy
    name = a.fleet
    if Path(a.fleet).suffix:
        from perf.cost.fleet_spec import load_fleet
        name = load_fleet(a.fleet).name
    doc = newest(name, a.fleet)
    allow = tuple(n.strip() for n in a.allow_from.split(",") if n.strip())
    version = a.k8s_version or deploy.K8S_VERSION
    for g in deploy.sizing_from_fleet(doc.path):
        m = deploy.render(g.name, g.sizing, a.repository_url, a.image or deploy.TRITON_IMAGE,
                          a.namespace or deploy.DEFAULT_NAMESPACE, g.models, a.image_digest, allow,
                          a.prometheus_namespace)
        out = deploy.write(m, a.out / f"fleet-{name}" / g.name, version)
        _say(f"manifests: PASSED; {len(m)} files valid for Kubernetes {version} in {out} (loads "
             f"{', '.join(g.models)}; replicas {g.sizing.min_replicas}..{g.sizing.max_replicas} x "
             f"{g.sizing.instance.name}, HPA target {g.sizing.target_pending_per_pod} pending requests/pod; "
             f"sizing: {g.sizing.source})")
        print(out)
    return 0


def add_manifest_command(sub) -> None:
    s = sub.add_parser("fleet-manifests", help="`make deploy-manifests FLEET=`: one Deployment per packed machine group")
    s.add_argument("--fleet", required=True, help="the fleet spec (.toml) or its name: its newest results are deployed")
    s.add_argument("--repository-url", default="/models", help="a mount path (PVC) or s3://bucket/path, gs://...")
    s.add_argument("--image", default=None, help="default: the NGC Triton image of perf/deploy/kubernetes.py")
    s.add_argument("--namespace", default=None, help="the models' namespace (never 'default'; default triton-inference)")
    s.add_argument("--image-digest", default=None, help="sha256:... of --image: pins it (else annotated as mutable)")
    s.add_argument("--allow-from", default="", help="namespaces whose pods may call the service ports, comma-separated")
    s.add_argument("--prometheus-namespace", default="monitoring", help="the namespace allowed to scrape port 8002")
    s.add_argument("--k8s-version", default=None, help="Kubernetes version the schemas are checked against")
    s.add_argument("--out", type=Path, default=Path("deploy"))
    s.set_defaults(fn=cmd_fleet_manifests)

    s = sub.add_parser("manifests", help="`make deploy-manifests`: Kubernetes manifests sized by the campaign -> deploy/")
    s.add_argument("--model", default="digits")
    s.add_argument("--campaign", type=Path, default=None, help="campaign results file (default: the newest for --model)")
    s.add_argument("--instance", default=None, help="GPU instance kind (default: the cheapest GPU kind in the catalog)")
    s.add_argument("--throughput-from", type=Path, default=None, help="a tune results file measured on that GPU kind")
    s.add_argument("--repository-url", default="/models", help="a mount path (PVC) or s3://bucket/path, gs://...")
    s.add_argument("--variants", default="", help="load only these variants (explicit model control), e.g. int8")
    s.add_argument("--image", default=None, help="default: the NGC Triton image of perf/deploy/kubernetes.py")
    s.add_argument("--namespace", default=None, help="the model's own namespace (never 'default'; default triton-inference)")
    s.add_argument("--image-digest", default=None, help="sha256:... of --image: pins it (else annotated as mutable)")
    s.add_argument("--allow-from", default="", help="namespaces whose pods may call the service ports, comma-separated "
                                                     "(the model's own namespace always may)")
    s.add_argument("--prometheus-namespace", default="monitoring", help="the namespace allowed to scrape port 8002")
    s.add_argument("--redis-url", default=None, help="the fleet's shared cache, redis://HOST:PORT/DB without the password "
                                                     "(it goes in the Secret <model>-cache, key password)")
    s.add_argument("--redis-selector", default="app.kubernetes.io/name=redis", help="the Redis pods' labels, KEY=VALUE,...")
    s.add_argument("--redis-namespace", default=None, help="the Redis pods' namespace (default: from HOST.NS.svc)")
    s.add_argument("--k8s-version", default=None, help="Kubernetes version the schemas are checked against")
    s.add_argument("--out", type=Path, default=Path("deploy"))
    s.set_defaults(fn=cmd_manifests)
