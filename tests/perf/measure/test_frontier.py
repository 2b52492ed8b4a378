"""The tuner's search for one config's SLA frontier, on a known latency curve (no server needed:
this is the search, the real-server ladder is test_tuning.py's)."""

import pytest

from perf.measure.analyzer import PerfPoint
from perf.measure.frontier import frontier, score


def curve(ms_per_request: float, rate_per_conc: float, saturate_at: float = 1e9, missing=()):
    """p99 grows linearly with concurrency; throughput too, up to a saturation point."""
    asked: list[int] = []

    def at(c: int):
        asked.append(c)
        if c in missing:
            return None
        thr = rate_per_conc * min(c, saturate_at)
        us = ms_per_request * c * 1e3
        return PerfPoint("concurrency", float(c), thr, us / 2, us, us, us)
    return at, asked


SLA = 10.0
ok = lambda p: p.p99_us / 1e3 <= SLA   # noqa: E731


def test_the_frontier_is_refined_between_the_last_load_that_met_the_sla_and_the_first_that_missed():
    at, asked = curve(0.4, 100)                       # p99 = 0.4 ms x c: meets 10 ms up to c = 25
    pts, runs = frontier(at, ok, start=1, cap=64)
    assert asked == [1, 2, 4, 8, 16, 32, 24] and runs == 7
    assert score(pts, SLA, "p99")[:2] == (2400.0, 24.0)   # a doubling ladder alone would score c = 16


def test_a_warm_start_finds_the_same_frontier_with_fewer_loads():
    cold, _ = frontier(curve(0.4, 100)[0], ok, start=1, cap=64)
    for start in (16, 32, 64):
        at, asked = curve(0.4, 100)
        warm, runs = frontier(at, ok, start=start, cap=64)
        assert score(warm, SLA, "p99") == score(cold, SLA, "p99") and runs <= 4, (start, asked)


def test_a_config_that_misses_the_sla_at_concurrency_1_scores_nothing():
    at, asked = curve(20.0, 100)
    pts, runs = frontier(at, ok, start=8, cap=64)
    assert asked == [8, 4, 2, 1] and score(pts, SLA, "p99")[0] == 0.0


def test_unmeasurable_loads_count_as_misses_and_are_never_scored():
    at, asked = curve(0.1, 100, missing={16, 24, 32, 64})   # e.g. shed by a queue policy from c = 16
    pts, _ = frontier(at, ok, start=4, cap=64)
    assert max(p.load for p in pts) == 12 and all(p.load not in (16, 24, 32) for p in pts)


def test_a_saturated_config_stops_climbing_before_the_cap():
    at, asked = curve(0.05, 100, saturate_at=4)     # throughput flat from c = 4, latency still far below the SLA
    pts, _ = frontier(at, ok, start=1, cap=64)
    assert max(asked) == 16 and score(pts, SLA, "p99")[0] == pytest.approx(400.0)


def test_a_start_above_the_cap_starts_at_the_cap():
    at, asked = curve(0.1, 100)
    pts, _ = frontier(at, ok, start=200, cap=24)
    assert asked[0] == 24 and max(asked) == 24 and score(pts, SLA, "p99")[1] == 24.0


def test_a_ratio_leaves_out_rounds_the_denominator_never_served_and_refuses_when_none_is_left():
    from perf.errors import SlaUnmet
    from perf.measure.replicates import ratio
    thr = {"pick": [100.0, 110.0, 90.0], "other": [100.0, 0.0, 100.0]}
    assert ratio(thr, "pick", "other").replicates == 2
    with pytest.raises(SlaUnmet, match="met the SLA at no load"):
        ratio({"pick": [1.0], "other": [0.0]}, "pick", "other")
