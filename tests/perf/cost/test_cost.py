"""Cost, fleet sizing and autoscaling math against hand-worked cases."""


import numpy as np
import pytest

from perf.cost import autoscale
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
