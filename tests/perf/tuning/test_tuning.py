"""A short real tuning run, the response cache on the real server, and the campaign composition."""


from dataclasses import replace

import numpy as np
import pytest

from build_engines.repository import ServingConfig, read_config, serving_from_config
from clients import LocalTriton, TritonClient
from perf.measure import analyzer
from perf.cost import pricing as cost
from perf.cost.campaign import build_campaign, cache_stats
from perf.errors import SlaUnmet
from perf.cost.campaign import CampaignRecord
from perf.measure.results import save
from perf.tuning.tuner import TuneRecord
from perf.measure.sweeps import load_candidate
from perf.tuning.tuner import (Candidate, Tuner, aimed_delays, challengers, grid, kept_cap, max_batch_for,
                               write_winner)

FAST = analyzer.PerfSettings(measurement_interval_ms=500, stability_pct=50, max_trials=6)


@pytest.fixture(scope="module")
def tuned(digits_build, digits_spec, tmp_path_factory):
    """One real, small tuning run (FP32/INT8, concurrency up to 8, one core's worth of instances)."""
    _, repo = digits_build
    import shutil
    own = tmp_path_factory.mktemp("tune") / "repo"
    shutil.copytree(repo, own)
    with LocalTriton(own, model_control="explicit") as srv:
        t = Tuner(srv.http_url, srv.grpc_url, own, digits_spec, sla_ms=20.0, settings=FAST, max_concurrency=8,
                  max_instances=2, progress=lambda m: None)
        res = t.run()
        res.verified = t.verify(rounds=2)
        win = t.winner
        cfg_path = write_winner(own, t.model(win.candidate.variant), win.candidate.serving)
        # follow-up: load the written config as is and measure at the winner's concurrency
        with TritonClient(srv.http_url, t.model(win.candidate.variant)) as c:
            c.load_model()
        check = analyzer.measure(srv.grpc_url, t.model(win.candidate.variant), "concurrency", win.concurrency, FAST)
    return res, win, cfg_path, check, own


def test_tuner_pick_meets_the_sla_in_a_follow_up_measurement(tuned):
    res, win, cfg_path, check, _ = tuned
    assert win.meets_sla and check.p99_us / 1e3 <= 20.0
    assert check.throughput_infer_per_s > 0.5 * win.throughput   # same config, same load: same ballpark


def test_tuner_prunes_and_tries_no_preferred_batch_size(tuned, digits_spec):
    res, *_ = tuned
    stages = [c.stage for c in res.candidates]
    assert stages[:2] == ["precision", "precision"] and "batching" in stages
    batching = res.stage("batching")
    assert batching[0].serving.preferred_batch_sizes == ()   # "none" is tried first
    assert all(c.serving.max_queue_delay_us <= 20000 / 4 for c in batching)
    assert res.candidates_measured < 20 and res.perf_analyzer_runs == sum(c.runs for c in res.candidates)
    assert {"precision", "instances", "batching", "final"} <= set(res.stage_winners) <= \
        {"precision", "instances", "batching", "variant", "final"}
    # for "none" and each preferred size, the two delays that bracket the time the batch takes to queue at
    # the rate that batches leaving at once served (none also leaves at once): for "none" a full batch, else
    # the smallest preferred size (Triton sends a batch as soon as one of them can be formed)
    # batches leaving at once at the cap derived from the saturation batch, then at the spec's (digits: 64),
    # and the rest of the stage at the one kept (kept_cap: the spec's only where it held GAIN more)
    derived = max_batch_for(digits_spec, res.saturation["saturation_batch"])
    assert derived < digits_spec.serving.max_batch_size
    leave, wide = batching[:2]
    assert [(c.serving.max_batch_size, c.serving.preferred_batch_sizes, c.serving.max_queue_delay_us)
            for c in (leave, wide)] == [(derived, (), 0), (digits_spec.serving.max_batch_size, (), 0)]
    leave = kept_cap(leave, wide, res.stage_winners["instances"])
    rest = batching[2:]
    assert rest and {c.serving.max_batch_size for c in rest} == {leave.serving.max_batch_size}
    rate = leave.capacity or res.stage_winners["instances"].capacity
    for pref in {c.serving.preferred_batch_sizes for c in rest}:
        got = {c.serving.max_queue_delay_us for c in rest if c.serving.preferred_batch_sizes == pref}
        aimed = set(aimed_delays(min(pref) if pref else leave.serving.max_batch_size, rate, 20.0))
        assert got == aimed
    # the other variant on the batching stage's winner, unless that is the baseline (stage 1 compared them)
    won, first = res.stage_winners["batching"], res.stage("precision")
    expect = [] if won.serving == first[0].serving else \
        [(c.variant, won.serving) for c in first if c.variant != won.variant and c.meets_sla]

    def but_batch_sizes(s):              # each variant's own max_batch_size and saturation-batch preferred size
        return replace(s, max_batch_size=1, preferred_batch_sizes=())
    assert [(c.variant, but_batch_sizes(c.serving)) for c in res.stage("variant")] == \
        [(v, but_batch_sizes(s)) for v, s in expect]
    assert all(c.serving.max_batch_size <= digits_spec.serving.max_batch_size for c in res.stage("variant"))
    assert ("variant" in res.stage_winners) == bool(expect)
    # the final round runs exactly when another family, the stage winner's own family at another queue
    # delay, another variant or a simpler config of its variant and instances measured within the band
    stage_winner = res.stage_winners.get("variant", won)
    field_ = challengers(res.candidates, stage_winner)
    assert (res.final_round == "none within band") == (not field_)
    assert res.final_round in {"ran", "undecided"} or not field_


def test_winning_config_is_written_through_protobuf(tuned):
    res, win, cfg_path, *_ = tuned
    cfg = read_config(cfg_path.parent)
    assert serving_from_config(cfg).instances == win.candidate.serving.instances
    assert cfg.max_batch_size == win.candidate.serving.max_batch_size
    assert cfg.HasField("dynamic_batching") == win.candidate.serving.dynamic_batching


def test_the_grid_holds_every_config_the_tuner_can_pick(tuned, digits_spec):
    """bench-tuner judges the pick against this grid: a config the tuner measured but the grid lacks
    would be a config the grid never had a chance to beat."""
    res, *_ = tuned
    by_variant = res.saturation["by_variant"]
    assert res.saturation["saturation_batch"] == by_variant[res.stage("batching")[0].variant]
    space = set(grid(digits_spec, ("fp32", "int8"), 20.0, {v: by_variant.get(v, 1) for v in ("fp32", "int8")}, (1, 2)))
    assert {c.candidate for c in res.candidates} <= space
    assert len(space) == len({c.label() for c in space})


def test_an_sla_no_config_meets_is_a_clear_error(digits_build, digits_spec, tmp_path):
    import shutil
    _, repo = digits_build
    own = tmp_path / "repo"
    shutil.copytree(repo, own)
    with LocalTriton(own, model_control="explicit") as srv:
        t = Tuner(srv.http_url, srv.grpc_url, own, digits_spec, sla_ms=0.01, settings=FAST, progress=lambda m: None)
        with pytest.raises(SlaUnmet, match="relax the SLA"):
            t.run()


def test_response_cache_hits_are_counted_by_the_server(copy_repo, digits_spec):
    x = digits_spec.resolve("evaluation")()[0]["image"]
    with LocalTriton(copy_repo, model_control="explicit") as srv:
        load_candidate(srv.http_url, copy_repo, "digits_fp32", ServingConfig.from_spec(digits_spec, response_cache=True))
        before = cache_stats(srv.http_url, "digits_fp32")
        with TritonClient(srv.http_url, "digits_fp32") as c:
            a = c.infer({"image": x[:1]})["logits"]
            b = c.infer({"image": x[:1]})["logits"]
            c.infer({"image": x[1:2]})
        after = cache_stats(srv.http_url, "digits_fp32")
    np.testing.assert_array_equal(a, b)
    assert after["hits"] - before["hits"] == 1 and after["misses"] - before["misses"] == 2


def test_campaign_composes_measured_levers(tuned, tmp_path):
    res, *_ = tuned
    res.instance = "c7i.large"
    tune_path = save(res, tmp_path, name="digits")
    assert TuneRecord.read(tune_path) == res          # the record round-trips whole
    traffic = cost.Traffic(1e9, 3.0)
    local = cost.load_catalog().get("c7i.large")
    camp = build_campaign(__import__("build_engines.spec", fromlist=["load_spec"]).load_spec("digits"), tune_path,
                          traffic, local, 0.2, None, [], {"fp32": 98.3, "int8": 98.3}, tmp_path, progress=lambda m: None)
    doc = CampaignRecord.read(camp)
    steps = doc.steps
    base = steps[0]
    fp32_base = next(c for c in res.stage("precision") if c.variant == "fp32")
    assert base.step.startswith("baseline") and base.throughput_rps == fp32_base.throughput
    # hand check of the baseline row from its own numbers
    fleet = cost.size_fleet(local, base.throughput_rps, traffic, 0.2)
    assert base.fleet_peak == fleet.peak_instances
    assert base.usd_per_million_served == pytest.approx(cost.monthly_cost_per_million(fleet.monthly_usd_always_on_peak, traffic))
    kept = [s for s in steps if s.kept]
    assert doc.baseline_over_optimized == pytest.approx(base.usd_per_million_served / kept[-1].usd_per_million_served)
    auto = steps[-1]
    assert auto.step.startswith("+ autoscaling") and 0 < doc.autoscaling.idle_saved_fraction < 1
    assert auto.monthly_usd < steps[-2].monthly_usd
    from perf.reports.report import campaign_report
    page = campaign_report(camp, tmp_path / "report").read_text()
    assert "baseline / optimized cost" in page and camp.name in page and tune_path.name in page
    assert ("Measured head to head" in page) == (res.verified is not None)


def test_a_campaign_row_is_kept_only_where_its_choice_is_in_the_winner(tuned, tmp_path):
    """From the real tune, re-read as if the precision stage had picked INT8 and a later stage had
    replaced it and the batching stage's pick by FP32 with other batching: neither row is kept."""
    from dataclasses import replace as swap
    res, *_ = tuned
    by = {c.variant: c for c in res.stage("precision")}
    if "int8" not in by:
        pytest.skip("this tune measured no INT8 candidate")
    fp32_final = swap(res.winner, candidate=Candidate("fp32", replace(res.winner.serving, preferred_batch_sizes=(1,),
                                                                      max_queue_delay_us=7)))
    batching = swap(res.winner, candidate=Candidate("int8", replace(res.winner.serving, preferred_batch_sizes=(2,))),
                    stage="batching")
    winners = {"precision": by["int8"], "batching": batching, "final": fp32_final}
    doc = swap(res, instance="c7i.large", winner=fp32_final, stage_winners=winners, final_round="ran")
    tune_path = save(doc, tmp_path, name="digits")
    camp = build_campaign(__import__("build_engines.spec", fromlist=["load_spec"]).load_spec("digits"), tune_path,
                          cost.Traffic(1e9, 3.0), cost.load_catalog().get("c7i.large"), 0.2, None, [],
                          {"fp32": 98.3, "int8": 98.3}, tmp_path, progress=lambda m: None)
    rows = {r.step.split(":")[0]: r for r in CampaignRecord.read(camp).steps}
    assert not rows["+ INT8 quantization"].kept
    assert "replaced by FP32 on the tuned config" in rows["+ INT8 quantization"].note
    assert not rows["+ dynamic batching (tuned)"].kept
    assert "a later step replaced it" in rows["+ dynamic batching (tuned)"].note
    assert rows["+ final round head to head"].kept


def test_requests_shed_by_a_queue_policy_are_never_scored_as_served(copy_repo, digits_spec):
    """An opt-in queue policy that rejects under load: the ladder stops at the first load with
    rejections, records it, and scores only the loads below (so no cost is built on shed requests)."""
    tight = ServingConfig(max_batch_size=2, preferred_batch_sizes=(), max_queue_delay_us=0, max_queue_size=2)
    # a loose SLA: under any queue policy Triton 2.51 sometimes holds lone requests for ms (README, Reliability)
    with LocalTriton(copy_repo, model_control="explicit", load=["digits_fp32"]) as srv:
        # The stall makes windows erratic: stability is loosened, and a ladder the stall cut short
        # below the shedding load (seen at c=1 and at c=2 in CI) is measured again by a fresh tuner.
        for _ in range(3):
            t = Tuner(srv.http_url, srv.grpc_url, copy_repo, digits_spec, sla_ms=2000.0,
                      settings=replace(FAST, stability_pct=100.0), max_concurrency=32,
                      progress=lambda m: None)
            m = t.measure(Candidate("fp32", tight), "batching")
            # max_queue_size 2 + a batch of 2 in flight: c <= 2 is never shed, so a stall there is the bug
            stalled = m.shed_at is None and any(f"c={c}: no stable measurement" in n for n in t.notes for c in (1, 2))
            if not stalled:
                break
    if stalled:
        pytest.skip("Triton 2.51's batcher stalled under the queue policy below the shedding load in 3 ladders "
                    f"(upstream server#8870, README: Reliability): {t.notes}")
    assert m.shed_at is not None and all(p.load < m.shed_at for p in m.points), t.notes
    assert m.meets_sla and m.concurrency < m.shed_at
    assert any("shed by the queue policy" in n for n in t.notes)


def test_the_winner_is_verified_against_the_baseline_head_to_head(tuned, tmp_path):
    res, win, *_ = tuned
    base = next(c for c in res.stage("precision") if c.variant == "fp32")
    if base.candidate == win.candidate:
        assert res.verified is None          # nothing to compare: the baseline won
        return
    v = res.verified
    assert v.rounds == 2 and len(v.baseline_rps) == len(v.tuned_rps) == 2 and min(v.baseline_rps + v.tuned_rps) > 0
    r = v.tuned_over_baseline
    assert r.replicates == 2 and r.low <= r.median <= r.high
    saved = TuneRecord.read(save(res, tmp_path))     # and it survives the record
    assert saved.verified == v
