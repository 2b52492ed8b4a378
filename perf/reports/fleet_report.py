"""The fleet report (`make report FLEET=...`): built from one fleet results file only."""

from __future__ import annotations

from pathlib import Path

from perf.cost.fleet import FleetRecord, paired_text


def _ms(v: float | None) -> str:
    return f"{v:.2f}" if v is not None else "-"


def _range(values: list[float]) -> str:
    return f"{min(values):.0f}..{max(values):.0f}"


def fleet_lines(rec: FleetRecord) -> list[str]:
    env = rec.environment
    chosen = " | ".join(" + ".join(g) for g in rec.chosen)
    packed = any(len(g) > 1 for g in rec.chosen)
    saving = paired_text(rec.solo_over_chosen)
    lines = [f"# Fleet {rec.fleet}: several models per machine", "",
             f"Measured together on one local Triton: {env.get('cpu', '?')}, {env.get('cores', '?')} cores; every set of "
             f"the fleet's models driven at once, each model by its own perf_analyzer at its share of the traffic "
             f"(request-rate mode, {rec.window_ms} ms windows, its held-out inputs), {rec.rounds} round(s) in turn. A "
             "set's capacity: the largest common scale of its mix at which every model met its own SLA. Client and "
             "server share this machine's cores.", "",
             "## Verdict", "",
             (f"Pack **{chosen}**: ${rec.chosen_monthly_usd:,.2f}/month against ${rec.solo_monthly_usd:,.2f}/month for "
              f"one model per machine; one per machine / packed = {saving} (the ratio within each round, median and "
              "95 % interval)." if packed else
              f"Keep every model on machines of its own (${rec.solo_monthly_usd:,.2f}/month): no packing measured "
              "here was cheaper."), "",
             "## Each model", "",
             "| model | req/day | SLA | served as | from | percentile alone at capacity (ms) | packed with | percentile "
             "packed at capacity (ms) | $/1M alone | $/1M packed |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    served = {s.name: s for s in rec.served}
    for m in rec.models:
        s = served[m.name]
        lines.append(f"| {m.name} | {m.requests_per_day:.3g} | {m.percentile} <= {m.sla_ms:g} ms | {s.model} | "
                     f"{s.config_source} | {_ms(m.latency_ms_solo)} | {', '.join(m.packed_with) or 'alone'} | "
                     f"{_ms(m.latency_ms_packed)} | {m.solo_usd_per_million:.4f} | {m.packed_usd_per_million:.4f} |")
    lines += ["", "A packed group's bill is shared by machine time: each model's requests/day over its solo capacity.",
              "", "## Sets measured together", "",
              "| set | capacity req/s (median) | over the rounds | limited by | instances | tuned together | "
              "memory GiB | priced as |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for g in rec.groups:
        limit = sorted({n for c in g.capacities for n in c.limiting})
        mem = rec.base_memory_gib + sum(served[n].memory_gib for n in g.names)
        inst = ", ".join(f"{n} {g.configs[n].instances}" for n in g.names) if g.configs else "-"
        tuned = g.tuned.why if g.tuned else "-"
        lines.append(f"| {g.label} | {g.median_rps:.0f} | {_range([c.capacity_rps for c in g.capacities])} | "
                     f"{', '.join(limit) or '-'} | {inst} | {tuned} | {mem:.2f} | "
                     f"{rec.priced_as[g.label].instance} |")
    lines += ["", "Priced as: the cheapest catalog CPU kind with this machine's cores and at least the set's "
              "memory (the server's, and what each model's load added, measured), + 1 GiB for the OS; or the kind "
              "the fleet spec names."]
    lines += ["", "## Packings priced (fleet rounding with headroom "
              f"{rec.headroom:.0%}, a warm pool, the autoscaled day)", "",
              "| packing | $/month (median) | per round |", "| --- | --- | --- |"]
    for p in sorted(rec.partitions, key=lambda p: (p.median_monthly is None, p.median_monthly or 0)):
        per = ", ".join(f"{m:,.2f}" if m is not None else "misses an SLA" for m in p.monthly_usd)
        mark = " (chosen)" if p.groups == rec.chosen else ""
        lines.append(f"| {p.label}{mark} | {f'{p.median_monthly:,.2f}' if p.median_monthly is not None else '-'} | {per} |")
    lines += ["", "## The chosen packing's machines", "",
              "| group | instance | $/h | capacity req/s | peak machines | warm pool | machine-hours/day | $/month |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for b in rec.bills:
        lines.append(f"| {' + '.join(b.names)} | {b.instance} | {b.usd_per_hour:.4f} | {b.capacity_rps:.0f} | "
                     f"{b.peak_instances} | {b.warm_pool} | {b.instance_hours_per_day:.1f} | {b.monthly_usd:,.2f} |")
    if rec.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in rec.notes]
    lines += ["", f"Prices read {rec.catalog.prices_read}; measured in {rec.seconds / 60:.1f} min; "
              f"server memory peak {rec.server_memory_gib:.2f} GiB; results file `{Path(rec.path).name if rec.path else '?'}`."]
    return lines


def fleet_report(path: Path, out_dir: Path | None = None) -> Path:
    rec = FleetRecord.read(path)
    out = Path(out_dir or Path(path).parent / "report") / f"fleet-{rec.fleet}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("\n".join(fleet_lines(rec)) + "\n")
    tmp.replace(out)
    return out
