"""Kubernetes manifests from a campaign file: schema-valid, sized from the report without cache
inflation, all or nothing, and accepted by a security scanner (checkov, run for real)."""

import json
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from perf.cost import pricing as cost
from perf.deploy import kubernetes as deploy
from perf.errors import CostError, DeployError
from perf.cost.autoscale import Policy
from perf.cost.campaign import Autoscaling, CampaignRecord
from perf.measure.results import save
from perf.tuning.tuner import Candidate, Measured, TuneRecord
from build_engines.spec import ServingConfig


def winner(throughput: float) -> Measured:
    return Measured(Candidate("fp32", ServingConfig()), "instances", throughput, 8, 4.0, throughput, [], 1)


def campaign_rec(traffic: float = 1e9, **autoscaling) -> CampaignRecord:
    a = Autoscaling(policy=Policy(0.7, 120.0, 600.0, 0.0, 3, 11),
                    instance_hours=0.0, always_on_instance_hours=0.0, idle_saved_fraction=0.0, short_minutes=0,
                    warm_pool=3, peak_fleet=11, per_instance_rps=5000.0, uncached_rps=5000.0, cache_hit_rate_source=None,
                    usable_rps=4000.0, hourly_demand_rps=[], ready_every_10_min=[])
    return CampaignRecord(model="digits", sla_ms=10.0, percentile="p99", traffic=cost.Traffic(traffic, 3.0), headroom=0.2,
                          catalog=cost.CatalogRef("2026-11-01", "test"), local_priced_as="c7i.large", priced_why="given", steps=[],
                          baseline_over_optimized=1.0, verified=None, autoscaling=replace(a, **autoscaling), winner=winner(5000.0),
                          tune_file="tune.json", imports=[], tuner={}, cache=None, day_source="synthetic",
                          accuracy_metric="top1")


def tune_rec(instance: str, throughput: float) -> TuneRecord:
    return TuneRecord(model="digits", instance=instance, sla_ms=10.0, percentile="p99", winner=winner(throughput),
                      stage_winners={}, candidates=[], perf_analyzer_runs=1, candidates_measured=1, saturation={},
                      notes=[], seconds=1.0)


@pytest.fixture()
def campaign(tmp_path):
    return save(campaign_rec(), tmp_path, name="digits")


def test_manifests_validate_and_carry_the_sizing(campaign, tmp_path):
    s = deploy.sizing_from_campaign(campaign)
    assert (s.min_replicas, s.max_replicas) == (3, 11)
    assert s.target_pending_per_pod == 14                 # ceil(5000 req/s x 0.7 x 4 ms)
    assert s.instance.name == "g4dn.xlarge"               # cheapest GPU kind of the catalog by default
    m = deploy.render("digits", s, "s3://bucket/models")
    out = deploy.write(m, tmp_path / "deploy" / "digits")
    files = {p.name: yaml.safe_load(p.read_text()) for p in out.iterdir()}
    assert set(files) == {"namespace.yaml", "deployment.yaml", "service.yaml", "networkpolicy.yaml", "pdb.yaml",
                          "hpa.yaml", "prometheus-adapter-rules.yaml"}
    hpa, dep = files["hpa.yaml"], files["deployment.yaml"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 11)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == deploy.METRIC
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 600
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 120
    assert "--model-repository=s3://bucket/models" in c["args"]
    assert dep["spec"]["replicas"] == 3
    ports = {p["name"]: p["port"] for p in files["service.yaml"]["spec"]["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    rule = yaml.safe_load(files["prometheus-adapter-rules.yaml"]["data"]["config.yaml"])["rules"][0]
    assert "nv_inference_pending_request_count" in rule["seriesQuery"]


def test_volume_repository_gets_a_claim(campaign, tmp_path):
    m = deploy.render("digits", deploy.sizing_from_campaign(campaign), "/models")
    assert "pvc.yaml" in m
    deploy.validate(m)


def test_a_broken_manifest_is_refused_and_nothing_is_written(campaign, tmp_path):
    m = deploy.render("digits", deploy.sizing_from_campaign(campaign), "/models")
    m["hpa.yaml"]["spec"]["minReplicas"] = "three"
    out = tmp_path / "deploy" / "digits"
    out.mkdir(parents=True)
    (out / "old.yaml").write_text("kept: true\n")
    with pytest.raises(DeployError, match="hpa.yaml does not validate"):
        deploy.write(m, out)
    assert [p.name for p in out.iterdir()] == ["old.yaml"]


def test_no_gpu_instance_in_the_catalog(campaign, tmp_path):
    (tmp_path / "cpu.toml").write_text('prices_read = "2024-12-01"\n[instances."c7i.large"]\nusd_per_hour = 0.09\n')
    with pytest.raises(CostError, match="no GPU instance"):
        deploy.sizing_from_campaign(campaign, catalog=cost.load_catalog(tmp_path / "cpu.toml"))
    with pytest.raises(CostError, match="has no GPU"):
        deploy.sizing_from_campaign(campaign, instance="c7i.large")


def test_zero_traffic_and_unmet_sla_are_clear_errors(tmp_path):
    zero = save(campaign_rec(traffic=0), tmp_path, name="z")
    with pytest.raises(CostError, match="zero requests/day"):
        deploy.sizing_from_campaign(zero)
    unmet = save(campaign_rec(per_instance_rps=0.0, uncached_rps=0.0), tmp_path, name="u")
    with pytest.raises(CostError, match="no configuration met the SLA"):
        deploy.sizing_from_campaign(unmet)


def test_gpu_throughput_from_a_tune_file_resizes(campaign, tmp_path):
    tune = save(tune_rec("g5.xlarge", 20000.0), tmp_path)
    s = deploy.sizing_from_campaign(campaign, instance="g5.xlarge", throughput_from=tune)
    # peak 1e9/86400*3 = 34722 req/s over 16000 usable per pod -> 3 pods
    assert s.max_replicas == 3 and s.instance.name == "g5.xlarge" and "g5.xlarge" in s.source
    wrong = save(tune_rec("g6.xlarge", 1.0), tmp_path)
    with pytest.raises(CostError, match="measured on g5.xlarge"):
        deploy.sizing_from_campaign(campaign, instance="g5.xlarge", throughput_from=wrong)


CHECKOV = Path(os.environ.get("TCK_TOOLS", Path(__file__).resolve().parents[3] / ".tools")) / "bin" / "checkov"


def checkov(directory: Path) -> dict:
    """The real scanner, offline: its JSON summary and the checks it skipped or failed."""
    out = subprocess.run([str(CHECKOV), "-d", str(directory), "--framework", "kubernetes", "-o", "json"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "BC_SKIP_MAPPING": "TRUE"})
    assert out.stdout, out.stderr[-2000:]
    return json.loads(out.stdout)


@pytest.mark.parametrize("digest", [None, "sha256:" + "ab" * 32])
def test_checkov_reports_no_failed_check_and_every_skip_says_why(campaign, tmp_path, digest):
    m = deploy.render("digits", deploy.sizing_from_campaign(campaign), "/models", image_digest=digest)
    out = deploy.write(m, tmp_path / "deploy" / "digits")
    doc = checkov(out)
    summary = doc["summary"]
    assert summary["failed"] == 0, [(c["check_id"], c["resource"]) for c in doc["results"]["failed_checks"]]
    assert summary["passed"] >= 85
    skipped = {c["check_id"]: c["check_result"].get("suppress_comment") or "" for c in doc["results"]["skipped_checks"]}
    assert set(skipped) == ({"CKV_K8S_35"} if digest else {"CKV_K8S_35", "CKV_K8S_43"})
    assert all(len(why) > 20 for why in skipped.values()), skipped


def test_the_pod_is_hardened_and_triton_admin_apis_need_the_secret(campaign, tmp_path):
    m = deploy.render("digits", deploy.sizing_from_campaign(campaign), "/models", allow_from=("web",))
    pod = m["deployment.yaml"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["automountServiceAccountToken"] is False and pod["securityContext"]["runAsUser"] >= 10000
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]   # the model volume is readable
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"] and sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert c["resources"]["limits"]["cpu"] == c["resources"]["requests"]["cpu"]
    assert {v["mountPath"] for v in c["volumeMounts"]} >= {"/tmp", "/dev/shm"}
    restricted = [a for a in c["args"] if a.startswith(("--http-restricted-api=", "--grpc-restricted-protocol="))]
    admin = [a for a in restricted if "inference" not in a]
    assert len(admin) == 2 and all("shared-memory" in a and "model-repository" in a and a.endswith(
        f"{deploy.ADMIN_HEADER}=$(TRITON_ADMIN_KEY)") for a in admin)
    # HTTP inference keyed too (Triton 2.51's JSON parser dies of one body); gRPC inference open
    assert [a for a in restricted if "inference" in a] == [
        f"--http-restricted-api=inference:{deploy.INFER_HEADER}=$(TRITON_INFER_KEY)"]
    for var, field in (("TRITON_ADMIN_KEY", "key"), ("TRITON_INFER_KEY", "infer-key")):
        key = next(e for e in c["env"] if e["name"] == var)
        assert key["valueFrom"]["secretKeyRef"] == {"name": "triton-digits-admin", "key": field}   # never a literal
    assert c["imagePullPolicy"] == "Always" and "tck/image-tag-mutable" in m["deployment.yaml"]["metadata"]["annotations"]
    np_ = m["networkpolicy.yaml"]["spec"]
    assert np_["ingress"][0]["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"] == ["triton-inference", "web"]
    assert np_["ingress"][1]["ports"] == [{"protocol": "TCP", "port": 8002}]
    assert m["namespace.yaml"]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    out = deploy.write(m, tmp_path / "d")
    text = "".join(p.read_text() for p in out.iterdir())
    assert "&id" not in text and "*id" not in text           # plain YAML, no anchors


def test_default_namespace_and_bad_digests_are_refused(campaign):
    s = deploy.sizing_from_campaign(campaign)
    with pytest.raises(DeployError, match="namespace of its own"):
        deploy.render("digits", s, "/models", namespace="default")
    with pytest.raises(DeployError, match="sha256"):
        deploy.render("digits", s, "/models", image_digest="latest")


def test_sizing_ignores_response_cache_hits(tmp_path):
    """The campaign counted cache hits (from a request log): a cold cache must not under-provision."""
    cached = save(campaign_rec(per_instance_rps=25000.0, uncached_rps=5000.0,
                               cache_hit_rate_source="your request log"), tmp_path, name="c")
    plain = save(campaign_rec(), tmp_path, name="p")
    s, base = deploy.sizing_from_campaign(cached), deploy.sizing_from_campaign(plain)
    assert s.per_instance_rps == 5000.0 and "without cache hits (25000 req/s with them)" in s.source
    assert s.target_pending_per_pod == base.target_pending_per_pod == 14   # 5000 req/s, not 25000 (would be 70)
    counted = deploy._bounds(cost.load_catalog().get("c7i.large"), 25000.0, cost.Traffic(1e9, 3.0), 0.2)
    assert s.max_replicas > counted[1]          # a cold cache gets the pods it needs
    ann = deploy.render("digits", s, "/models")["deployment.yaml"]["metadata"]["annotations"]
    assert ann["tck/per-instance-rps"] == "5000.0 (cache hits not counted)"


def test_the_serving_clients_reach_the_shared_cache_with_its_password_in_a_secret(campaign, tmp_path):
    s = deploy.sizing_from_campaign(campaign)
    cache = deploy.CacheTarget("redis://tck-cache.cache.svc.cluster.local:6380/2", (("app", "tck-redis"),))
    m = deploy.render("digits", s, "s3://bucket/models", allow_from=("shop",), cache=cache)
    out = deploy.write(m, tmp_path / "deploy" / "digits")              # validated against the schemas
    files = {p.name: yaml.safe_load(p.read_text()) for p in out.iterdir()}
    cfg, pol = files["cache-client.yaml"], files["networkpolicy-cache.yaml"]
    assert cfg["data"]["host"] == "tck-cache.cache.svc.cluster.local" and cfg["data"]["port"] == "6380"
    env = yaml.safe_load(cfg["data"]["client-env.yaml"])
    assert env[0]["valueFrom"]["secretKeyRef"] == {"name": "triton-digits-cache", "key": "password"}
    assert env[1]["value"] == "redis://:$(TCK_REDIS_PASSWORD)@tck-cache.cache.svc.cluster.local:6380/2"
    assert pol["metadata"]["namespace"] == "cache" and pol["spec"]["podSelector"]["matchLabels"] == {"app": "tck-redis"}
    rule = pol["spec"]["ingress"][0]
    assert rule["ports"] == [{"protocol": "TCP", "port": 6380}]
    assert rule["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"] == ["shop", "triton-inference"]
    assert "cache-client.yaml" not in deploy.render("digits", s, "s3://bucket/models")
    for bad, said in (("redis://:hunter2@r:6379/0", "Secret"), ("http://r:6379", "redis://"), ("redis://r/abc", "database")):
        with pytest.raises(deploy.DeployError, match=said):
            deploy.render("digits", s, "s3://bucket/models", cache=deploy.CacheTarget(bad))
