"""The search for one config's SLA frontier and its score, on known latency curves (no server needed:
this is the search, the real-server ladder is test_tuning.py's)."""

import pytest

from perf.measure.analyzer import PerfPoint
from perf.measure.frontier import Sla, frontier, score


def curve(ms_per_request: float, rate_per_conc: float, saturate_at: float = 1e9, missing=(), floor_ms: float = 0.0):
    """p99 grows linearly with concurrency (from floor_ms); throughput too, up to a saturation point."""
    asked: list[int] = []

    def at(c: int):
        asked.append(c)
        if c in missing:
            return None
        thr = rate_per_conc * min(c, saturate_at)
        us = (floor_ms + ms_per_request * c) * 1e3
        return PerfPoint("concurrency", float(c), thr, us / 2, us, us, us)
    return at, asked


SLA = Sla(10.0, "p99")


def test_the_doubling_ladder_is_refined_between_the_last_load_that_met_the_sla_and_the_first_that_missed():
    at, asked = curve(0.4, 100)                       # p99 = 0.4 ms x c: meets 10 ms up to c = 25
    pts, runs = frontier(at, SLA, start=1, cap=64, predict=False)
    assert asked == [1, 2, 4, 8, 16, 32, 24] and runs == 7
    s = score(pts, SLA)
    assert (s.throughput, s.concurrency) == (2400.0, 24.0)   # a doubling ladder alone would score c = 16


def test_predicted_steps_find_the_frontier_in_fewer_loads():
    for ms, floor in ((0.4, 0.0), (0.25, 2.0), (0.1, 5.0)):      # SLA concurrency 25, 32, 50
        at, cold = curve(ms, 100, floor_ms=floor)
        slow, _ = frontier(at, SLA, start=1, cap=64, predict=False)
        at, asked = curve(ms, 100, floor_ms=floor)
        fast, runs = frontier(at, SLA, start=1, cap=64)
        true = (10 - floor) / ms * 100
        assert runs < len(cold) if floor == 0 else runs <= len(cold), (ms, asked, cold)
        assert score(fast, SLA).capacity == pytest.approx(true, rel=0.01), asked
        assert score(slow, SLA).capacity == pytest.approx(true, rel=0.01)


def test_a_warm_start_finds_the_same_frontier_with_fewer_loads():
    cold, _ = frontier(curve(0.4, 100)[0], SLA, start=1, cap=64)
    for start in (8, 16, 24, 32, 64):
        at, asked = curve(0.4, 100)
        warm, runs = frontier(at, SLA, start=start, cap=64)
        assert score(warm, SLA).capacity == pytest.approx(score(cold, SLA).capacity) and runs <= 3, (start, asked)


def test_the_capacity_is_interpolated_between_the_loads_that_bracket_the_sla_and_never_beyond_them():
    P = PerfPoint
    pts = [P("concurrency", 8, 3000, 0, 0, 0, 6000), P("concurrency", 16, 4000, 0, 0, 0, 8000),
           P("concurrency", 24, 4400, 0, 0, 0, 12000)]
    s = score(pts, SLA)
    assert (s.throughput, s.concurrency, s.latency_ms) == (4000, 16, 8.0)
    assert s.capacity == pytest.approx(4200)           # halfway from 8 to 12 ms
    assert score(pts[:2], SLA).capacity == 4000        # nothing above that missed: the measured best
    flat = [pts[1], P("concurrency", 24, 3900, 0, 0, 0, 12000)]
    assert score(flat, SLA).capacity == 4000           # a miss with less throughput adds none
    assert score(pts, Sla(1.0)) == score([], SLA) and not score(pts, Sla(1.0)).meets_sla


def test_a_config_that_misses_the_sla_at_concurrency_1_scores_nothing():
    for predict in (True, False):
        at, asked = curve(20.0, 100)
        pts, runs = frontier(at, SLA, start=8, cap=64, predict=predict)
        assert asked[-1] == 1 and score(pts, SLA).throughput == 0.0 and runs <= 4


def test_unmeasurable_loads_count_as_misses_and_are_never_scored():
    for predict in (True, False):
        at, asked = curve(0.1, 100, missing={16, 24, 32, 64} | set(range(13, 64)))   # e.g. shed from c = 13
        lost: list[float] = []
        pts, _ = frontier(at, SLA, start=4, cap=64, predict=predict, unmeasured=lost)
        assert 10 <= max(p.load for p in pts) <= 12, asked
        assert set(lost) == {c for c in asked if c >= 13}


def test_no_capacity_is_interpolated_across_a_load_that_could_not_be_measured():
    P = PerfPoint
    pts = [P("concurrency", 16, 4000, 0, 0, 0, 8000), P("concurrency", 32, 6000, 0, 0, 0, 12000)]
    assert score(pts, SLA).capacity == pytest.approx(5000)
    assert score(pts, SLA, unmeasured=[24]).capacity == 4000      # 24 was unstable: nothing known between
    assert score(pts, SLA, unmeasured=[48]).capacity == pytest.approx(5000)


def test_a_latency_spike_at_the_upper_load_does_not_make_the_refinement_creep():
    spike = {23: 200.0}

    def at(c: int):
        asked.append(c)
        ms = spike.get(c, 0.5 * c)                   # the SLA falls at c = 20; the first load above, 23, spiked
        return PerfPoint("concurrency", float(c), 100.0 * c, ms * 500, ms * 1e3, ms * 1e3, ms * 1e3)
    asked: list[int] = []
    pts, runs = frontier(at, SLA, start=8, cap=64, refine=1.25)
    assert asked[:2] == [8, 23] and runs <= 5 and 19 <= score(pts, SLA).concurrency <= 20, asked


def test_a_saturated_config_stops_climbing_before_the_cap():
    for predict, top in ((False, 16), (True, 64)):
        at, asked = curve(0.05, 100, saturate_at=4)   # throughput flat from c = 4, latency far below the SLA
        pts, _ = frontier(at, SLA, start=1, cap=256, predict=predict)
        assert max(asked) <= top and score(pts, SLA).throughput == pytest.approx(400.0), asked


def test_a_start_above_the_cap_starts_at_the_cap():
    at, asked = curve(0.1, 100)
    pts, _ = frontier(at, SLA, start=200, cap=24)
    assert asked[0] == 24 and max(asked) == 24 and score(pts, SLA).concurrency == 24.0


def test_a_ratio_leaves_out_rounds_the_denominator_never_served_and_refuses_when_none_is_left():
    from perf.errors import SlaUnmet
    from perf.measure.replicates import ratio
    thr = {"pick": [100.0, 110.0, 90.0], "other": [100.0, 0.0, 100.0]}
    assert ratio(thr, "pick", "other").replicates == 2
    with pytest.raises(SlaUnmet, match="met the SLA at no load"):
        ratio({"pick": [1.0], "other": [0.0]}, "pick", "other")


def test_a_linear_drift_weighs_on_every_interleaved_config_alike():
    """A machine that slows steadily over a comparison (a neighbour's job ramping up): with the rounds'
    order alternating, each config's mean slowdown over a pair of rounds is the same, so the drift
    leaves no trace in a ratio taken over an even number of rounds; always A first, it would."""
    import numpy as np
    from perf.measure.replicates import schedule

    labels = ["pick", "grid #1", "grid #2", "grid #3"]
    for rounds in (2, 4, 8):
        when = {k: [] for k in labels}
        for t, label in enumerate(label for order in schedule(labels, rounds) for label in order):
            when[label].append(t)                         # slowdown proportional to the time of measurement
        means = {k: np.mean(v) for k, v in when.items()}
        assert max(means.values()) == min(means.values()), (rounds, means)
        assert all(len(v) == rounds for v in when.values())
