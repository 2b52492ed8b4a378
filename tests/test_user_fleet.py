"""Two models of a user's, not ours, packed as a fleet: a click model (float and int64 inputs, a GRU,
two outputs) and a heavy convolutional one, each with its own SLA and traffic, built from their specs,
served on one real Triton, measured alone and together by concurrent perf_analyzers, priced packed
against one model per machine, reported."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from perf.cost import fleet
from perf.cost.fleet import FleetRecord
from perf.cost.fleet_spec import load_fleet
from perf.measure.analyzer import PerfSettings
from perf.reports.fleet_report import fleet_report

HERE = Path(__file__).parent

FLEET = """# a user's fleet spec, beside their model specs
name = "shop"
rounds = 1

[[model]]
spec = "clicks.toml"
requests_per_day = 3e7
sla_ms = 40
percentile = "p95"

[[model]]
spec = "speckle.toml"
traffic_trace = "speckle-day.txt"
sla_ms = 80
"""


@pytest.fixture(scope="module")
def fleet_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("shop")
    for name in ("clicks", "speckle"):
        shutil.copytree(HERE / "usermodels" / name, root / name)
        shutil.copy(HERE / "usermodels" / f"{name}.toml", root / f"{name}.toml")
    # the user serves clicks with 2 instances: with speckle's 1 that is 3 on 2 cores, so the pair is tuned together
    clicks = (root / "clicks.toml").read_text()
    assert "[serving]\n" in clicks
    (root / "clicks.toml").write_text(clicks.replace("[serving]\n", "[serving]\ninstances = 2\n"))
    (root / "speckle-day.txt").write_text("\n".join(str(5 + (h % 12)) for h in range(24)))   # 24 hourly req/s
    (root / "fleet.toml").write_text(FLEET)
    # built as a user builds them, by the CLI in a process of its own (an export in this test process can meet
    # CPython 3.11.7's AST recursion-depth bug, gh-106905, after an earlier test's RecursionError)
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "tck", "engines", "--model", f"{root / 'clicks.toml'},{root / 'speckle.toml'}",
                        "--precisions", "fp32", "--repository", str(root / "repo"), "--build-dir", str(root / "build")],
                       cwd=root, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    spec = load_fleet(root / "fleet.toml")
    path = fleet.run(spec, root / "repo", root / "build", PerfSettings(measurement_interval_ms=300),
                     results_dir=root / "results", progress=lambda m: None)
    return spec, FleetRecord.read(path), root


def test_each_model_is_built_and_served_as_its_spec_says_and_its_memory_measured(fleet_run):
    spec, rec, root = fleet_run
    assert sorted((root / "repo").iterdir()) == [root / "repo" / "clicks_fp32", root / "repo" / "speckle_fp32"]
    assert [s.model for s in rec.served] == ["clicks_fp32", "speckle_fp32"]
    for s in rec.served:
        assert "no solo tune" in s.config_source and s.memory_gib > 0
    assert rec.served[1].requests_per_day == pytest.approx(sum(5 + (h % 12) for h in range(24)) / 24 * 86400)


def test_every_set_is_measured_together_and_holds_each_model_to_its_own_sla(fleet_run):
    spec, rec, _ = fleet_run
    assert [g.label for g in rec.groups] == ["clicks", "speckle", "clicks + speckle"]
    slas = {m.name: m.sla for m in spec.members}
    for g in rec.groups:
        c = g.capacities[0]
        assert c.capacity_rps > 0, g.label
        at = c.at_capacity()
        assert [m.name for m in at.models] == g.names             # every model of the set ran in that one run
        for m in at.models:
            assert m.meets_sla and m.latency_ms <= slas[m.name].ms
            assert m.served_rps >= 0.9 * m.offered_rps
        above = [p for p in c.points if p.scale_rps > c.capacity_rps]
        assert above and all(not p.meets_sla for p in above)      # the edge was found, not a cap
        assert set(c.limiting) <= set(g.names) and c.limiting
    pair = rec.groups[2].capacities[0].at_capacity()
    total = sum(m.requests_per_day for m in spec.members)
    for m, member in zip(pair.models, spec.members):              # each at its share of the mix
        assert m.offered_rps == pytest.approx(pair.scale_rps * member.requests_per_day / total, rel=1e-6)


def test_the_packing_is_priced_against_one_per_machine_and_reported(fleet_run):
    spec, rec, root = fleet_run
    labels = sorted(p.label for p in rec.partitions)
    assert labels == ["clicks + speckle", "clicks | speckle"]
    cheapest = min((p for p in rec.partitions if p.feasible), key=lambda p: p.median_monthly)
    assert rec.chosen == cheapest.groups and rec.chosen_monthly_usd == cheapest.median_monthly
    solo = next(p for p in rec.partitions if len(p.groups) == 2)
    assert rec.solo_monthly_usd == solo.median_monthly
    assert rec.solo_over_chosen.median == pytest.approx(solo.monthly_usd[0] / cheapest.monthly_usd[0])
    by = {m.name: m for m in rec.models}
    for m in spec.members:
        c = by[m.name]
        assert c.latency_ms_packed is not None and c.latency_ms_packed <= m.sla.ms
        assert c.solo_usd_per_million > 0 and c.packed_usd_per_million > 0
    out = fleet_report(rec.path)
    text = out.read_text()
    assert out.parent == root / "results" / "report"
    for word in ("## Verdict", "clicks + speckle", "clicks | speckle", "p95 <= 40 ms", "p99 <= 80 ms"):
        assert word in text, word


def test_the_chosen_packing_deploys_one_deployment_per_group_loading_its_models(fleet_run, tmp_path):
    import yaml
    from perf.deploy import kubernetes as deploy
    _, rec, _ = fleet_run
    groups = deploy.sizing_from_fleet(rec.path)
    assert [g.name.split("-") for g in groups] == rec.chosen
    served = {s.name: s.model for s in rec.served}
    for g, bill in zip(groups, rec.bills):
        assert g.models == [served[n] for n in bill.names]
        assert (g.sizing.min_replicas, g.sizing.max_replicas) == (bill.warm_pool, max(bill.warm_pool, bill.peak_instances))
        assert g.sizing.per_instance_rps == bill.capacity_rps and g.sizing.instance.name == bill.instance
        out = deploy.write(deploy.render(g.name, g.sizing, "/models", models=g.models), tmp_path / g.name)
        files = {p.name: yaml.safe_load(p.read_text()) for p in out.iterdir()}
        c = files["deployment.yaml"]["spec"]["template"]["spec"]["containers"][0]
        assert "--model-control-mode=explicit" in c["args"]
        assert [a.split("=", 1)[1] for a in c["args"] if a.startswith("--load-model=")] == g.models
        assert "nvidia.com/gpu" not in c["resources"]["limits"]           # a CPU kind: it was measured on CPU
        hpa = files["hpa.yaml"]["spec"]
        assert (hpa["minReplicas"], hpa["maxReplicas"]) == (g.sizing.min_replicas, g.sizing.max_replicas)


def test_loaded_models_of_a_text_ensemble_bring_its_parts_first():
    from perf.deploy.kubernetes import loaded_models
    assert loaded_models("minilm", "minilm_text_int8", "int8") == ["minilm_tokenizer", "minilm_int8", "minilm_text_int8"]
    assert loaded_models("digits", "digits_fp32", "fp32") == ["digits_fp32"]


def test_a_users_fleet_is_never_recorded_and_the_projects_record_renders(fleet_run, tmp_path):
    from perf.reports import records
    spec, rec, root = fleet_run
    assert not records.is_project_fleet(spec.path, [m.spec.path for m in spec.members])
    house = records.ROOT / "build_engines" / "examples" / "fleets" / "house.toml"
    from perf.cost.fleet_spec import load_fleet as load
    h = load(house)
    assert records.is_project_fleet(house, [m.spec.path for m in h.members])
    # the summary's lines render from the record alone (a copy of records/ with this run's fleet added)
    shutil.copytree(records.RECORDS_DIR, tmp_path / "records")
    path = records.record_fleet(rec, tmp_path / "records")
    summary = records.FleetSummary.read(path)
    assert summary.chosen == " | ".join(" + ".join(g) for g in rec.chosen)
    block = records.readme_block(tmp_path / "records")
    assert f"fleet `{rec.fleet}`" in block and "| clicks |" in block and "| speckle |" in block


def test_the_pair_is_tuned_together_on_the_cores_and_measured_with_its_pick(fleet_run):
    import os
    _, rec, _ = fleet_run
    solo = {g.label: g for g in rec.groups}
    pair = solo["clicks + speckle"]
    assert solo["clicks"].configs["clicks"].instances == 2 and solo["clicks"].tuned is None
    t = pair.tuned
    if (os.cpu_count() or 1) >= 3:
        pytest.skip("3 instances fit this machine's cores: nothing co-location changes")
    assert t.alternatives == {"as tuned alone": {"clicks": 2, "speckle": 1}, "clicks 1 instances": {"clicks": 1, "speckle": 1}}
    assert all(len(v) == 2 for v in t.capacities.values())          # head to head: 2 rounds each, in turn
    means = {k: sum(v) / 2 for k, v in t.capacities.items()}
    if t.pick == "clicks 1 instances":
        assert means[t.pick] > means["as tuned alone"] * 1.02
    else:
        assert t.pick == "as tuned alone" and means["clicks 1 instances"] <= means["as tuned alone"] * 1.02
    assert pair.configs["clicks"].instances == t.alternatives[t.pick]["clicks"]   # the rounds measured the pick
