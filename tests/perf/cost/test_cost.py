"""Cost, fleet sizing and autoscaling math against hand-worked cases."""


import numpy as np
import pytest

from perf.cost import autoscale
from perf.cost.cache_replay import hit_rate_bound
from perf.cost import pricing as cost
from perf.errors import CostError


def test_cost_per_request_by_hand():
    # $0.36/h = $0.0001/s; at 100 req/s that is $1e-6 per request, $1 per 1M.
    assert cost.cost_per_request(0.36, 100) == pytest.approx(1e-6)
    assert cost.cost_per_million(0.36, 100) == pytest.approx(1.0)
    assert cost.cost_per_million(0.526, 2000) == pytest.approx(0.526 / 3600 / 2000 * 1e6)


def test_catalog_is_dated_and_has_common_kinds():
    cat = cost.load_catalog()
    assert cat.prices_read and "us-east-1" in cat.source
    for name in ("m5.2xlarge", "c7i.large", "g4dn.xlarge", "g5.xlarge", "g6.xlarge", "p4d.24xlarge"):
        assert cat.get(name).usd_per_hour > 0
    assert {i.name for i in cat.gpu_instances()} >= {"g4dn.xlarge", "g5.xlarge", "g6.xlarge", "p4d.24xlarge"}
    assert cat.get("my-box", price_per_hour=0.5).usd_per_hour == 0.5
    with pytest.raises(CostError, match="--price-per-hour"):
        cat.get("my-box")


def test_fleet_sizing_ceil_effects():
    inst = cost.Instance("x", 1.0)
    # 8.64e6 req/day = 100 req/s average, peak 3x = 300 req/s; 100 req/s per instance, 20 % headroom -> 80 usable
    t = cost.Traffic(8.64e6, 3.0)
    fs = cost.size_fleet(inst, 100, t, headroom=0.2)
    assert t.peak_rps == pytest.approx(300) and fs.usable_rps == pytest.approx(80)
    assert fs.peak_instances == 4                   # 300 / 80 = 3.75 -> 4
    assert fs.monthly_usd_always_on_peak == pytest.approx(4 * 730)
    exact = cost.size_fleet(inst, 100, cost.Traffic(8.64e6 * 320 / 300, 3.0), headroom=0.2)
    assert exact.peak_instances == 4                # exactly 4.0 instances: no extra one from float noise
    assert cost.size_fleet(inst, 100, cost.Traffic(8.64e6 * 321 / 300, 3.0), headroom=0.2).peak_instances == 5


def test_minimum_fleet_and_zero_traffic():
    inst = cost.Instance("x", 2.0)
    fs = cost.size_fleet(inst, 1000, cost.Traffic(1000, 2.0), headroom=0.2, min_warm=2)
    assert fs.peak_instances == 2 and fs.monthly_usd_always_on_peak == pytest.approx(2 * 2.0 * 730)
    zero = cost.size_fleet(inst, 1000, cost.Traffic(0, 2.0), min_warm=1)
    assert zero.peak_instances == 1 and zero.usd_per_million is None
    with pytest.raises(CostError, match="zero traffic"):
        cost.monthly_cost_per_million(zero.monthly_usd_always_on_peak, cost.Traffic(0))


def test_monthly_cost_per_million_served_by_hand():
    # 1e6 req/day for 730/24 days = 30.4167e6 requests; $730/month -> $24 per 1M
    assert cost.monthly_cost_per_million(730.0, cost.Traffic(1e6)) == pytest.approx(730 / (730 / 24))


@pytest.mark.parametrize("fn,match", [
    (lambda: cost.Instance("x", -1.0), "positive"),
    (lambda: cost.Instance("x", 0.0), "positive"),
    (lambda: cost.cost_per_request(1.0, 0), "no configuration meets the SLA"),
    (lambda: cost.Traffic(-5), ">= 0"),
    (lambda: cost.Traffic(10, 0.5), "peak_to_average"),
    (lambda: cost.size_fleet(cost.Instance("x", 1.0), 0, cost.Traffic(10)), "no configuration meets the SLA"),
    (lambda: cost.size_fleet(cost.Instance("x", 1.0), 10, cost.Traffic(10), headroom=1.0), "headroom"),
    (lambda: cost.size_fleet(cost.Instance("x", 1.0), 10, cost.Traffic(10), min_warm=0), "warm pool"),
])
def test_bad_inputs_are_clear_errors(fn, match):
    with pytest.raises(CostError, match=match):
        fn()


def test_diurnal_profile_has_the_asked_mean_and_peak():
    d = autoscale.diurnal_profile(100, 3)
    assert d.mean() == pytest.approx(100) and d.max() == pytest.approx(300, rel=1e-3) and d.min() > 0
    with pytest.raises(CostError, match="too spiky"):
        autoscale.diurnal_profile(100, 50)


def test_autoscaling_flat_demand_needs_no_scaling():
    sim = autoscale.simulate(np.full(24, 100.0), 100, autoscale.Policy(target_utilization=0.5, min_replicas=2, max_replicas=5))
    assert sim.min_ready == sim.max_ready == 2 and sim.short_minutes == 0
    assert sim.instance_hours == pytest.approx(48) and sim.always_on_instance_hours == pytest.approx(120)
    assert sim.idle_saved_fraction == pytest.approx(1 - 48 / 120)


def test_autoscaling_step_up_waits_for_cold_start_and_scales_down_after_the_delay():
    day = np.array([10.0] * 6 + [400.0] * 6 + [10.0] * 12)      # req/s per hour; 100 req/s per instance
    pol = autoscale.Policy(target_utilization=1.0, cold_start_s=300, scale_down_delay_s=1800, min_replicas=1, max_replicas=4)
    sim = autoscale.simulate(day, 100, pol)
    tl = sim.timeline
    assert sim.max_ready == 4
    # demand ramps (interpolated) from hour 5 to 6; instances asked for then are ready 5 minutes later
    first_short = next(x["minute"] for x in tl if x["ready"] * 100 < x["demand_rps"])
    assert 300 <= first_short < 360 and sim.short_minutes > 0
    # after the drop at hour 11-12, instances stay until demand was low for 30 min
    drop = next(x["minute"] for x in tl if x["minute"] > 720 and x["ready"] < 4)
    assert drop >= 690 + 30
    assert 0 < sim.idle_saved_fraction < 1


def test_policy_validation():
    with pytest.raises(CostError):
        autoscale.Policy(target_utilization=0)
    with pytest.raises(CostError):
        autoscale.Policy(min_replicas=3, max_replicas=2)


def test_this_machine_is_priced_by_its_cores_and_the_memory_the_models_need(tmp_path):
    import os
    cores = os.cpu_count()
    (tmp_path / "c.toml").write_text(f"""prices_read = "2024-12-01"
[instances.tiny]
usd_per_hour = 0.01
vcpus = {max(cores - 1, 0)}
memory_gib = 64
[instances.fits]
usd_per_hour = 0.10
vcpus = {cores}
memory_gib = 4
[instances.roomy]
usd_per_hour = 0.40
vcpus = {cores * 4}
memory_gib = 64
[instances.gpu]
usd_per_hour = 0.02
vcpus = {cores * 4}
memory_gib = 64
gpus = 1
""")
    cat = cost.load_catalog(tmp_path / "c.toml")
    inst, why = cat.this_machine(memory_gib=2.0)
    assert inst.name == "fits" and f">= {cores} vCPUs" in why and "measured memory" in why   # fewer cores never fit
    assert cat.this_machine(memory_gib=32.0)[0].name == "roomy"           # a GPU kind is never a CPU machine's price
    with pytest.raises(CostError, match="--instance"):
        cat.this_machine(memory_gib=500.0)
    assert cat.this_machine("gpu")[0].name == "gpu"                         # --instance wins
    assert cat.this_machine(None, 0.5) == (cost.Instance("this machine", 0.5, cores, cost._memory_gib()), "--price-per-hour")


def test_a_variant_that_misses_the_sla_is_reported_not_priced(tmp_path):
    from build_engines.spec import ServingConfig, load_spec
    from perf.cost.campaign import CampaignRecord, build_campaign
    from perf.measure.results import save
    from perf.reports.report import campaign_report
    from perf.tuning.tuner import Candidate, Measured, TuneRecord

    base = ServingConfig(dynamic_batching=False, preferred_batch_sizes=())
    fp32 = Measured(Candidate("fp32", base), "precision", 1000.0, 4, 3.0, 1000.0, [], 3)
    int8 = Measured(Candidate("int8", base), "precision", 0.0, None, None, 0.0, [], 1)
    tune = TuneRecord(model="digits", instance="c7i.large", sla_ms=10.0, percentile="p99", winner=fp32,
                      stage_winners={"precision": fp32, "batching": fp32, "instances": fp32}, candidates=[fp32, int8],
                      perf_analyzer_runs=4, candidates_measured=2, saturation={}, notes=[], seconds=1.0)
    path = build_campaign(load_spec("digits"), save(tune, tmp_path), cost.Traffic(1e8, 3.0), cost.load_catalog().get("c7i.large"),
                          0.2, None, [], {}, tmp_path, progress=lambda m: None, priced_why="given with --instance")
    rec = CampaignRecord.read(path)
    row = next(s for s in rec.steps if s.step.startswith("+ INT8"))
    assert row.usd_per_million_served is None and not row.kept and "misses the SLA" in row.note
    assert rec.baseline_over_optimized > 0 and rec.priced_why == "given with --instance"
    page = campaign_report(path, tmp_path / "report").read_text()
    assert "| + INT8 quantization | no | misses the SLA |" in page and "not priced" in page and "1e-09" not in page


def test_a_short_log_a_slow_miss_or_no_hit_never_claims_the_caches_saving(tmp_path):
    """A log of 10 alike requests hits 90 %, and its bound (65 %) is all the bill counts; a model whose
    p99 leaves no room for a miss's GET + SET within the SLA keeps no shared cache; a log without a repeat
    reports no hit latency (not 0 ms), and a shared cache that saves nothing is not kept (Redis costs)."""
    from build_engines.spec import ServingConfig, load_spec
    from perf.cost.campaign import CacheOptions, CampaignRecord, build_campaign
    from perf.measure.results import save
    from perf.reports.report import campaign_report
    from perf.tuning.tuner import Candidate, Measured, TuneRecord

    def campaign(lines, latency_ms=3.0):
        fp32 = Measured(Candidate("fp32", ServingConfig(dynamic_batching=False)), "precision", 1000.0, 4, latency_ms,
                        1000.0, [], 3)
        tune = TuneRecord(model="digits", instance="c7i.large", sla_ms=10.0, percentile="p99", winner=fp32,
                          stage_winners={"precision": fp32}, candidates=[fp32], perf_analyzer_runs=3,
                          candidates_measured=1, saturation={}, notes=[], seconds=1.0)
        log = tmp_path / "requests.txt"
        log.write_text("\n".join(lines) + "\n")
        path = build_campaign(load_spec("digits"), save(tune, tmp_path), cost.Traffic(1e8, 3.0),
                              cost.load_catalog().get("c7i.large"), 0.2, None, [], {}, tmp_path, progress=lambda m: None,
                              request_log=log, cache_options=CacheOptions(replicas=1))
        rec = CampaignRecord.read(path)
        return rec, next(s for s in rec.steps if "shared response cache" in s.step), path
    short, row, _ = campaign(["a"] * 10)
    assert short.cache_replay.shared_hit_rate == pytest.approx(0.9)
    assert short.cache_replay.shared_hit_bound == pytest.approx(hit_rate_bound(9, 10)) and \
        0.64 < short.cache_replay.shared_hit_bound < 0.66
    assert row.throughput_rps == pytest.approx(1000 / (1 - short.cache_replay.shared_hit_bound))
    assert row.throughput_rps < 1000 / (1 - 0.9) / 3          # a third of what the rate measured would claim
    slow, row, _ = campaign(["a", "b", "a", "a"] * 50, latency_ms=9.999)
    assert slow.cache_replay.miss_p99_ms > 0.001 and not row.kept and "passes the SLA (10 ms): not kept" in row.note
    none, row, path = campaign([str(i) for i in range(50)])
    assert none.cache_replay.hit_p50_ms is None and none.cache_replay.hit_p99_ms is None
    assert not row.kept and "no hit in the log" in row.note and "not cheaper than without it" in row.note
    assert "No request of the log hit the shared cache" in campaign_report(path, tmp_path / "report").read_text()


def test_the_cache_saving_comes_from_your_requests_or_is_shown_by_hit_rate(tmp_path):
    from build_engines.spec import ServingConfig, load_spec
    from perf.cost.campaign import CampaignRecord, build_campaign
    from perf.measure.results import save
    from perf.reports.report import campaign_report
    from dataclasses import replace

    from perf.tuning.tuner import CacheStep, Candidate, Measured, TuneRecord

    fp32 = Measured(Candidate("fp32", ServingConfig(dynamic_batching=False)), "precision", 1000.0, 4, 3.0, 1000.0, [], 3)
    tune = TuneRecord(model="digits", instance="c7i.large", sla_ms=10.0, percentile="p99", winner=fp32,
                      stage_winners={"precision": fp32, "batching": fp32, "instances": fp32}, candidates=[fp32],
                      perf_analyzer_runs=3, candidates_measured=1, saturation={}, notes=[], seconds=1.0,
                      cache=CacheStep(replace(fp32, stage="cache", throughput=4000.0), 4000.0, 1000.0, 90, 10))
    tune_path = save(tune, tmp_path)
    spec, local = load_spec("digits"), cost.load_catalog().get("c7i.large")

    def campaign(traffic=cost.Traffic(1e8, 3.0), **kw):
        return CampaignRecord.read(build_campaign(spec, tune_path, traffic, local, 0.2, None, [], {},
                                                  tmp_path, progress=lambda m: None, **kw))
    unknown = campaign()
    row = next(s for s in unknown.steps if "response cache" in s.step)
    assert not row.kept and "hit rate unknown" in row.step           # no headline built on an assumed hit rate
    by = {r.hit_rate: r for r in unknown.cache.by_hit_rate}
    assert by[0.0].saving == pytest.approx(0.0) and by[0.8].throughput_rps == pytest.approx(1000 / (0.8 / 4 + 0.2))
    assert by[0.18].saving < by[0.5].saving < by[0.8].saving

    log = tmp_path / "requests.txt"
    log.write_text("# sha256 of each request's input\n" + "\n".join(["a", "b", "a", "a", "c", "a", "b", "a"] * 25) + "\n")
    from perf.cost.campaign import CacheOptions

    def rows(rec):
        return (next(s for s in rec.steps if "response cache per pod" in s.step),
                next(s for s in rec.steps if "shared response cache" in s.step),
                next(s for s in rec.steps if s.step.startswith("+ autoscaling")))
    # Redis on a machine already paid for: the same hit rate, but Triton's local cache still costs each hit a
    # request (all-hit 4x no-cache) and Redis does not; both priced at the rate's lower 95 % bound from 200
    # requests (96.3 %), not at the 98.5 % measured
    one = campaign(request_log=log, cache_options=CacheOptions(replicas=1, redis_price_per_hour=0))
    pod, shared, _ = rows(one)
    assert one.cache_replay.shared_hit_rate == pytest.approx(1 - 3 / 200) == one.cache_replay.per_pod_hit_rate
    bound = hit_rate_bound(197, 200)
    assert one.cache_replay.shared_hit_bound == pytest.approx(bound) and 0.96 < bound < 0.965
    assert shared.kept and not pod.kept and "replaces it" in pod.note and "your request log" in shared.step
    assert shared.throughput_rps == pytest.approx(1000 / (1 - bound))
    assert pod.throughput_rps == pytest.approx(1000 / (bound / 4 + 1 - bound))
    assert "hit p50 / p99" in shared.note and "a miss adds its GET + SET" in shared.note
    # Redis's own machine on the bill (the cheapest catalog CPU kind with 1.5x its 256 MB): for this small fleet
    # it costs what the pods it saves cost, and the per-pod cache is kept instead
    redis_monthly = cost.load_catalog().get("c7i.large").usd_per_hour * cost.HOURS_PER_MONTH
    billed = campaign(request_log=log, cache_options=CacheOptions(replicas=1))
    pod_b, shared_b, auto_b = rows(billed)
    assert shared_b.monthly_usd == pytest.approx(shared.monthly_usd + redis_monthly)
    assert "Redis's own machine priced in: c7i.large" in shared_b.note
    assert pod_b.kept and not shared_b.kept and "not cheaper than without it" in shared_b.note
    assert "Redis's machine" not in auto_b.note
    # ten times the traffic: Redis pays for itself, and every row after it carries its machine
    big = campaign(cost.Traffic(1e9, 3.0), request_log=log, cache_options=CacheOptions(replicas=1))
    pod_g, shared_g, auto_g = rows(big)
    assert shared_g.kept and not pod_g.kept
    _, _, auto_free = rows(campaign(cost.Traffic(1e9, 3.0), request_log=log,
                                    cache_options=CacheOptions(replicas=1, redis_price_per_hour=0)))
    assert "Redis's machine" in auto_g.note and auto_g.monthly_usd == pytest.approx(auto_free.monthly_usd + redis_monthly)
    assert one.baseline_over_optimized > unknown.baseline_over_optimized
    fleet = campaign(request_log=log)                           # spread over the sized fleet
    assert fleet.cache_replay.replicas == next(s for s in fleet.steps if s.step.startswith("+ right-sizing")).fleet_peak
    assert fleet.cache_replay.replicas > 1
    assert fleet.cache_replay.per_pod_hit_rate < fleet.cache_replay.shared_hit_rate
    yours = one

    day = tmp_path / "day.txt"
    day.write_text("\n".join(str(100 + 50 * (h in range(9, 18))) for h in range(24)))
    traced = campaign(traffic_trace=day)
    assert traced.traffic.requests_per_day == pytest.approx((15 * 100 + 9 * 150) * 3600)
    assert "your traffic trace" in traced.day_source and traced.autoscaling.hourly_demand_rps[10] == 150
    page = campaign_report(yours.path, tmp_path / "report").read_text()
    assert "saving by hit rate" in page and "98.5%" in page and "simulated day" in page
    assert "per-pod caches against one shared cache" in page and "p99" in page
    bad = tmp_path / "short.txt"
    bad.write_text("1\n2\n")
    with pytest.raises(CostError, match="24"):
        campaign(traffic_trace=bad)


@pytest.mark.parametrize("state", ["ran", "none within band", "undecided", "off", "bogus"])
def test_the_final_round_row_says_whether_it_ran(tmp_path, state):
    from build_engines.spec import ServingConfig, load_spec
    from perf.cost.campaign import CampaignRecord, build_campaign
    from perf.errors import CostError
    from perf.measure.results import save
    from perf.tuning.tuner import FINAL_STATES, Candidate, Measured, TuneRecord

    fp32 = Measured(Candidate("fp32", ServingConfig(dynamic_batching=False)), "precision", 1000.0, 4, 3.0, 1000.0, [], 3)
    tune = TuneRecord(model="digits", instance="c7i.large", sla_ms=10.0, percentile="p99", winner=fp32,
                      stage_winners={"precision": fp32, "instances": fp32, "batching": fp32, "final": fp32},
                      candidates=[fp32], perf_analyzer_runs=3, candidates_measured=1, saturation={}, notes=[],
                      seconds=1.0, final_round=state)

    def campaign():
        return build_campaign(load_spec("digits"), save(tune, tmp_path), cost.Traffic(1e8, 3.0),
                              cost.load_catalog().get("c7i.large"), 0.2, None, [], {}, tmp_path, progress=lambda m: None)
    if state not in FINAL_STATES:
        with pytest.raises(CostError, match="run `make tune` again"):
            campaign()
        return
    row = next(s for s in CampaignRecord.read(campaign()).steps if s.step.startswith("+ final round"))
    assert ("not run" in row.note or "not decided" in row.note) == (state != "ran")


def test_the_variant_stage_has_its_row_and_an_unknown_stage_is_refused(tmp_path):
    """The tuner's re-check of the other precision on the tuned config is a step of its own in the bill;
    a stage this version does not know (a record from another version) is refused, never dropped."""
    from build_engines.spec import ServingConfig, load_spec
    from perf.cost.campaign import CampaignRecord, build_campaign
    from perf.errors import CostError
    from perf.measure.results import save
    from perf.tuning.tuner import Candidate, Measured, TuneRecord

    base = ServingConfig(dynamic_batching=False)
    batched = ServingConfig(dynamic_batching=True, max_batch_size=16, max_queue_delay_us=1000, instances=2)
    fp32 = Measured(Candidate("fp32", base), "precision", 1000.0, 4, 3.0, 1000.0, [], 3)
    int8 = Measured(Candidate("int8", base), "precision", 900.0, 4, 3.0, 900.0, [], 3)
    tuned = Measured(Candidate("fp32", batched), "batching", 4000.0, 20, 9.0, 4000.0, [], 3)
    other = Measured(Candidate("int8", batched), "variant", 4400.0, 20, 9.0, 4400.0, [], 3)

    def campaign(winners, variant_stage=other):
        tune = TuneRecord(model="digits", instance="c7i.large", sla_ms=10.0, percentile="p99", winner=winners["final"],
                          stage_winners=winners, candidates=[fp32, int8, tuned, variant_stage], perf_analyzer_runs=12,
                          candidates_measured=4, saturation={}, notes=[], seconds=1.0, final_round="off")
        return build_campaign(load_spec("digits"), save(tune, tmp_path), cost.Traffic(1e8, 3.0),
                              cost.load_catalog().get("c7i.large"), 0.2, None, [], {}, tmp_path, progress=lambda m: None)
    winners = {"precision": fp32, "instances": fp32, "batching": tuned, "variant": other, "final": other}
    steps = CampaignRecord.read(campaign(winners)).steps
    row = next(s for s in steps if s.step.startswith("+ the other precision"))
    assert row.kept and "int8" in row.step and "1 config measured" in row.note
    assert [s.step.split(":")[0] for s in steps][:6] == [
        "baseline", "+ INT8 quantization", "+ instance group (tuned)", "+ dynamic batching (tuned)",
        "+ the other precision on the tuned config", "+ final round head to head"]
    # measured and not kept: the row names what was measured, at its throughput, not the incumbent again
    slower = Measured(Candidate("int8", batched), "variant", 3600.0, 20, 9.0, 3600.0, [], 3)
    kept_fp32 = {"precision": fp32, "instances": fp32, "batching": tuned, "variant": tuned, "final": tuned}
    row = next(s for s in CampaignRecord.read(campaign(kept_fp32, slower)).steps
               if s.step.startswith("+ the other precision"))
    assert not row.kept and "int8" in row.step and row.throughput_rps == 3600.0 and "not kept" in row.note
    with pytest.raises(CostError, match="reheat.*run `make tune` again"):
        campaign(winners | {"reheat": other})
