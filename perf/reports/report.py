"""Reports built from results files only: Markdown with matplotlib plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from perf.errors import NoResults, PerfError
from perf.cost.campaign import CampaignRecord
from perf.measure.results import RESULTS_DIR, AgreementRecord, ReplicatesRecord, SweepRecord, load_all, run_status
from perf.reports.plots import plot_sweeps, plt


def _table(sweeps: list[SweepRecord]) -> list[str]:
    rows = ["| config | load | throughput (infer/s) | p50 ms | p99 ms | queue us | compute infer us | file |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in sweeps:
        for p in s.points:
            rows.append(f"| {s.label} | {p.load:g} | {p.throughput_infer_per_s:.0f} | {p.p50_us / 1e3:.2f} | "
                        f"{p.p99_us / 1e3:.2f} | {p.server_queue_us or 0:.0f} | {p.server_compute_infer_us or 0:.0f} | "
                        f"{s.path.name} |")
    return rows


def perf_report(model_prefix: str, results_dir: Path | None = None, out_dir: Path | None = None,
                run_id: str | None = None) -> Path:
    """The report of one `make perf` run (the newest unless run_id is given)."""
    rd = Path(results_dir or RESULTS_DIR)
    sweeps = [s for s in load_all(SweepRecord, rd) if s.model.startswith(model_prefix + "_")]
    if not sweeps:
        raise NoResults(f"no sweep results for {model_prefix!r} in {rd}; run `make perf MODEL={model_prefix}` first")
    run_id = run_id or max(sweeps, key=lambda s: s.created).run_id
    sweeps = sorted((s for s in sweeps if s.run_id == run_id), key=lambda s: s.label)
    manifest = run_status(model_prefix, run_id, rd)
    if manifest is None or not manifest.complete:
        raise PerfError(f"run {run_id} of {model_prefix} is incomplete ({len(sweeps)} of "
                        f"{len(manifest.expected) if manifest else '?'} sweeps; "
                        f"{'interrupted' if manifest else 'no run manifest'}): rerun `make perf MODEL={model_prefix}`, "
                        "or report an earlier run with --run-id")
    out_dir = Path(out_dir or rd / "report")
    tput, lat = plot_sweeps(sweeps, out_dir / f"perf-{model_prefix}.png", model_prefix)
    env, srv, client = sweeps[0].environment, sweeps[0].server, sweeps[0].client
    lines = [f"# perf: {model_prefix} (run {run_id})", "",
             f"Server: {srv['name']} {srv['version']} at {srv['url']}. Machine: {env['cpu']}, {env['cores']} cores. "
             f"Client: perf_analyzer, {client['protocol']}, batch {client['batch_size']}, "
             f"window {client['measurement_interval_ms']} ms, stability {client['stability_pct']} %. Inputs: "
             + (f"`{Path(client['input_data']).name}` (held-out samples of the spec, sent in turn; dynamic axes at "
                "the lengths the data has)." if client.get("input_data") else "perf_analyzer's random data (asked for)."),
             ""]
    lines += headline(load_all(ReplicatesRecord, rd, model=model_prefix, run_id=run_id)) + [""]
    lines += [f"![throughput vs p99]({tput.name})", "", f"![latency vs load]({lat.name})", ""] + _table(sweeps)
    agreement = load_all(AgreementRecord, rd, run_id=run_id)
    if agreement:
        lines += ["", "## Our load generator vs perf_analyzer (same model, same inputs, same Poisson load)", "",
                  "Measured in turn (ours, perf_analyzer, ...); ratios are the median of the rounds with a 95 % "
                  "interval. Server-side is Triton's own queue + compute time per request: what both clients' "
                  "latencies contain. Trust perf_analyzer's client latency for SLAs; the difference between the "
                  "two clients is client overhead, not the server's.", "",
                  "| rate req/s | rounds | thr ratio (ours/PA) | p50 ratio | ours p50 ms | PA p50 ms | server-side ms | client-limited | file |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for a in agreement:
            for r in a.rows:
                med = lambda xs: float(np.median(xs))  # noqa: E731
                lines.append(f"| {r.rate:g} | {len(r.ours)} | {r.throughput_ratio.text()} | {r.p50_ratio.text()} | "
                             f"{med([o['p50_ms'] for o in r.ours]):.2f} | {med([p.p50_us for p in r.perf_analyzer]) / 1e3:.2f} | "
                             f"{r.server_ms:.2f} | {any(o['client_limited'] for o in r.ours)} | {a.path.name} |")
    out = out_dir / f"perf-{model_prefix}.md"
    out.write_text("\n".join(lines) + "\n")
    return out


def headline(replicates: list[ReplicatesRecord]) -> list[str]:
    """The run's ratios, each the median of interleaved rounds with its 95 % interval."""
    if not replicates:
        return ["No ratios stated: this run has no interleaved replicates (`--rounds 0`, or a remote server "
                "measured as served); the sweeps below are single runs."]
    r = replicates[-1]
    out = [f"Ratios at {r.mode} {r.load:g}: {next(iter(r.ratios.values())).replicates} interleaved rounds of the "
           f"{len(r.throughput)} configs (in turn, window {r.window_ms} ms, inputs {r.inputs}); median and 95 % "
           f"bootstrap interval of the per-round ratios (`{r.path.name}`):", ""]
    for name, iv in r.ratios.items():
        out.append(f"- **{name}**: **{iv.text()}**")
    return out


def campaign_report(campaign_path: Path, out_dir: Path | None = None) -> Path:
    """The campaign page: each lever's throughput at SLA, accuracy, cost per 1M and saving, with plots."""
    doc = CampaignRecord.read(campaign_path)
    out_dir = Path(out_dir or Path(campaign_path).parent / "report")
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = doc.steps
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = [f"{i}" for i in range(len(steps))]
    colors = ["tab:green" if s.kept else "tab:gray" for s in steps]
    a1.bar(names, [s.usd_per_million_served or 0.0 for s in steps], color=colors)   # 0: misses the SLA
    a1.set_ylabel("USD per 1M requests served (fleet bill)")
    a1.set_xlabel("step (gray: measured, not kept)")
    a2.bar(names, [s.throughput_rps for s in steps], color=colors)
    a2.set_ylabel(f"throughput per instance at {doc.percentile} <= {doc.sla_ms:g} ms (req/s)")
    a2.set_xlabel("step")
    for ax in (a1, a2):
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{doc.model}: cost campaign")
    fig.tight_layout()
    png = out_dir / f"campaign-{doc.model}.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)

    a = doc.autoscaling
    fig, ax = plt.subplots(figsize=(8, 3.4))
    hours = np.arange(24)
    ax.plot(hours, a.hourly_demand_rps, label="demand (req/s)")
    ax.axhline(a.peak_fleet * a.usable_rps, color="gray", ls="--", label=f"always-on fleet ({a.peak_fleet}) capacity")
    if a.ready_every_10_min:
        ready = np.asarray(a.ready_every_10_min)
        ax.step(np.arange(len(ready)) / 6.0, ready * a.usable_rps, where="post", color="tab:green",
                label="autoscaled capacity (ready instances, simulated)")
    ax.set_xlabel("hour of day")
    ax.set_ylabel("req/s")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    png2 = out_dir / f"campaign-{doc.model}-day.png"
    fig.tight_layout()
    fig.savefig(png2, dpi=110)
    plt.close(fig)

    t = doc.traffic
    lines = [f"# Cost campaign: {doc.model}", "",
             f"SLA: {doc.percentile} <= {doc.sla_ms:g} ms. Traffic: {t.requests_per_day:,.0f} requests/day, "
             f"peak/average {t.peak_to_average:g}, headroom {doc.headroom:.0%}. This machine is priced as "
             f"`{doc.local_priced_as}` ({doc.priced_why}); prices: {doc.catalog.source}, read {doc.catalog.prices_read} "
             "(recorded, not live).", "",
             (f"**Measured head to head: the tuned config serves {doc.verified.text()} the baseline's requests per "
              f"second at the SLA on one machine** (each round's capacity at the SLA, interpolated between the loads "
              f"that bracket it: = baseline/tuned cost per request at those rates; {doc.verified.replicates} "
              "interleaved rounds, median and 95 % interval)." if doc.verified else
              "No head-to-head verification in this campaign (the winner is the baseline, or re-composed from a tune "
              "file without one): the ratio below is from single tuner measurements."),
             f"Composed bill, baseline / optimized cost per 1M requests served: {doc.baseline_over_optimized:.2f}x "
             f"({steps[0].usd_per_million_served:.4f} -> {[s for s in steps if s.kept][-1].usd_per_million_served:.4f} USD; "
             "measured levers, fleet rounding and the simulated autoscaling day together, so no interval).",
             f"Tuner: {doc.tuner['candidates']} configs, {doc.tuner['perf_analyzer_runs']} perf_analyzer runs. "
             f"Winner: {doc.winner.label}.", "",
             f"![campaign]({png.name})", "",
             "| # | step | kept | throughput/instance (req/s) | accuracy | USD/1M at SLA throughput | fleet | USD/month | USD/1M served | saving vs previous | note | source |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for i, s in enumerate(steps):
        accs = ("-" if s.accuracy is None else f"{s.accuracy:.2f}%" if doc.accuracy_metric == "top1"
                else f"cosine {s.accuracy:.4f}")
        if s.usd_per_million_served is None:
            lines.append(f"| {i} | {s.step} | no | misses the SLA | {accs} | not priced | - | - | - | - | {s.note} | "
                         f"{s.source} |")
            continue
        lines.append(f"| {i} | {s.step} | {'yes' if s.kept else 'no'} | {s.throughput_rps:.0f} | {accs} | "
                     f"{s.usd_per_million_at_sla_throughput:.4f} | {s.fleet_peak} x {s.instance} | "
                     f"{s.monthly_usd:,.0f} | {s.usd_per_million_served:.4f} | {s.saving_vs_previous:+.0%} | "
                     f"{s.note} | {s.source} |")
    if doc.cache:
        c = doc.cache
        lines += ["", "## Response cache: the saving by hit rate", "",
                  f"Measured on the winner: {c.all_hit_rps:.0f} infer/s when every request hits Triton's local cache, "
                  f"{c.no_cache_rps:.0f} without it (Triton counted {c.server_hits} hits, {c.server_misses} "
                  "misses): between the two, a request costs a hit's or a miss's time. A shared cache in front of the "
                  "fleet (Redis) answers a hit before it reaches a pod: the pods serve only the misses, and Redis's "
                  "own machine is billed" + (f" ({c.redis_priced_as})" if c.redis_priced_as else "") + ". The hit rate "
                  "is your traffic's: "
                  + (f"**{c.hit_rate:.1%}** per pod from {c.hit_rate_source}." if c.hit_rate is not None else
                     "give a request log (`--request-log`) to measure yours; until then the headline counts neither "
                     "cache, and this table is the saving as a function of the hit rate."), "",
                  "| hit rate | per pod: throughput/instance (req/s) | per pod: USD/1M served | per pod: saving | "
                  "shared: requests/instance (req/s) | shared: saving |", "| --- | --- | --- | --- | --- | --- |"]
        for r in c.by_hit_rate:
            shared = f"{r.shared_throughput_rps:.0f} | {r.shared_saving:+.0%}" if r.shared_saving is not None else "- | -"
            lines.append(f"| {r.hit_rate:.0%} | {r.throughput_rps:.0f} | {r.usd_per_million_served:.4f} | "
                         f"{r.saving:+.0%} | {shared} |")
    rp = doc.cache_replay
    if rp is not None:
        ttl = f"TTL {rp.ttl_s:g} s on the log's clock" if rp.ttl_s is not None else "no TTL (the log has no timestamps)"
        lines += ["", f"## Your request log replayed: per-pod caches against one shared cache (redis-server {rp.redis})", "",
                  f"{rp.source}, sent to {rp.replicas} replicas at {rp.balancer}; each answer {rp.value_bytes} bytes.", "",
                  "| cache | hit rate | memory | evicted | notes |", "| --- | --- | --- | --- | --- |",
                  f"| per pod (Triton's local cache) x {rp.replicas} | {rp.per_pod_hit_rate:.1%} (pods "
                  + ", ".join(f"{h:.0%}" for h in rp.per_pod_hit_rates[:8]) + (" ..." if len(rp.per_pod_hit_rates) > 8 else "")
                  + f") | {rp.pod_memory_mb} MB each | {rp.per_pod_evicted} | LRU, no TTL |",
                  f"| shared (Redis, every replica's clients) | **{rp.shared_hit_rate:.1%}** | {rp.shared_memory_mb} MB | "
                  f"{rp.shared_evicted} | {ttl}; {rp.shared_expired} found expired |", "",
                  (f"A shared hit costs one Redis round trip: p50 {rp.hit_p50_ms:.3f} ms, p99 {rp.hit_p99_ms:.3f} ms "
                   if rp.hit_p99_ms is not None else "No request of the log hit the shared cache (no hit latency) ")
                  + "(loopback here; a network hop in a cluster adds to it)"
                  + (f"; a miss adds its GET and SET, p99 {rp.miss_p99_ms:.3f} ms" if rp.miss_p99_ms is not None else "")
                  + f", against the model's {doc.percentile} of "
                  + (f"{doc.winner.latency_ms:.2f} ms" if doc.winner.latency_ms else "(not measured)")
                  + (" at its operating load. The bill's cache rows above count each hit rate's lower 95 % bound "
                     f"(shared: {rp.shared_hit_bound:.1%} from {rp.requests} requests)." if rp.shared_hit_bound is not None
                     else " at its operating load. The bill's cache rows above count the hit rates measured (a "
                     "campaign written before the bound was recorded).")]
    lines += ["", f"## Autoscaling (simulated day from {doc.day_source}; per-instance throughput measured)", "",
              f"Policy: target utilization {a.policy.target_utilization:.0%}, cold start {a.policy.cold_start_s:g} s, "
              f"scale-down delay {a.policy.scale_down_delay_s:g} s, replicas {a.warm_pool}..{a.peak_fleet}. "
              f"{a.instance_hours:.1f} instance-hours/day vs {a.always_on_instance_hours:.1f} always-on at peak: "
              f"**{a.idle_saved_fraction:.0%} idle compute saved**; {a.short_minutes} minutes short of capacity.", "",
              f"![day]({png2.name})", "", f"Source: `{Path(campaign_path).name}` (and `{doc.tune_file}`)."]
    out = out_dir / f"campaign-{doc.model}.md"
    out.write_text("\n".join(lines) + "\n")
    return out
