"""Kubernetes manifests from a campaign file: schema-valid, sized from the report, all or nothing."""


import pytest
import yaml

from perf import cost, deploy
from perf.errors import CostError
from perf.results import write_result


def campaign_doc(**over):
    doc = {"model": "digits", "sla_ms": 10.0, "percentile": "p99", "traffic": {"requests_per_day": 1e9, "peak_to_average": 3.0},
           "headroom": 0.2, "local_priced_as": "c7i.large",
           "autoscaling": {"warm_pool": 3, "peak_fleet": 11, "per_instance_rps": 5000.0, "usable_rps": 4000.0,
                           "policy": {"target_utilization": 0.7, "cold_start_s": 120.0, "scale_down_delay_s": 600.0,
                                      "scale_up_delay_s": 0.0, "min_replicas": 3, "max_replicas": 11}},
           "winner": {"label": "fp32 ...", "latency_ms": 4.0, "throughput": 5000.0}, "steps": []}
    doc.update(over)
    return doc


@pytest.fixture()
def campaign(tmp_path):
    return write_result("campaign", campaign_doc(), tmp_path, name="digits")


def test_manifests_validate_and_carry_the_sizing(campaign, tmp_path):
    s = deploy.sizing_from_campaign(campaign)
    assert (s.min_replicas, s.max_replicas) == (3, 11)
    assert s.target_pending_per_pod == 14                 # ceil(5000 req/s x 0.7 x 4 ms)
    assert s.instance.name == "g4dn.xlarge"               # cheapest GPU kind of the catalog by default
    m = deploy.render("digits", s, "s3://bucket/models")
    out = deploy.write(m, tmp_path / "deploy" / "digits")
    files = {p.name: yaml.safe_load(p.read_text()) for p in out.iterdir()}
    assert set(files) == {"deployment.yaml", "service.yaml", "pdb.yaml", "hpa.yaml", "prometheus-adapter-rules.yaml"}
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
    with pytest.raises(CostError, match="hpa.yaml does not validate"):
        deploy.write(m, out)
    assert [p.name for p in out.iterdir()] == ["old.yaml"]


def test_no_gpu_instance_in_the_catalog(campaign, tmp_path):
    (tmp_path / "cpu.toml").write_text('prices_read = "2024-12-01"\n[instances."c7i.large"]\nusd_per_hour = 0.09\n')
    with pytest.raises(CostError, match="no GPU instance"):
        deploy.sizing_from_campaign(campaign, catalog=cost.load_catalog(tmp_path / "cpu.toml"))
    with pytest.raises(CostError, match="has no GPU"):
        deploy.sizing_from_campaign(campaign, instance="c7i.large")


def test_zero_traffic_and_unmet_sla_are_clear_errors(tmp_path):
    zero = write_result("campaign", campaign_doc(traffic={"requests_per_day": 0, "peak_to_average": 3.0}), tmp_path, name="z")
    with pytest.raises(CostError, match="zero requests/day"):
        deploy.sizing_from_campaign(zero)
    unmet = write_result("campaign", campaign_doc(autoscaling={**campaign_doc()["autoscaling"], "per_instance_rps": 0}),
                         tmp_path, name="u")
    with pytest.raises(CostError, match="no configuration met the SLA"):
        deploy.sizing_from_campaign(unmet)


def test_gpu_throughput_from_a_tune_file_resizes(campaign, tmp_path):
    tune = write_result("tune", {"model": "digits", "instance": "g5.xlarge", "winner": {"throughput": 20000.0}}, tmp_path)
    s = deploy.sizing_from_campaign(campaign, instance="g5.xlarge", throughput_from=tune)
    # peak 1e9/86400*3 = 34722 req/s over 16000 usable per pod -> 3 pods
    assert s.max_replicas == 3 and s.instance.name == "g5.xlarge" and "g5.xlarge" in s.source
    wrong = write_result("tune", {"model": "digits", "instance": "g6.xlarge", "winner": {"throughput": 1.0}}, tmp_path)
    with pytest.raises(CostError, match="measured on g5.xlarge"):
        deploy.sizing_from_campaign(campaign, instance="g5.xlarge", throughput_from=wrong)
