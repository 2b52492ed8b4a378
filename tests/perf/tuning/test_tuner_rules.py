"""The tuner's rules that need no server: the in-process saturation batch that bounds its batching space
(on real ONNX graphs whose cost is, by construction, per call or per sample), the preferred sizes it
tries, the queue delays it aims at, and who meets the stage winner in the final round."""

import numpy as np
import onnx
from onnx import TensorProto, helper

from build_engines.runtime import ort_session
from perf.tuning.tuner import saturation_of

SIZES = [1, 2, 4, 8, 16, 32, 64]


def _session(tmp_path, name, nodes, inputs, inits=()):
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, name, inputs, [out], initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    return ort_session(path, threads=1)


def test_a_model_whose_cost_is_per_call_saturates_late(tmp_path):
    """Work on a batch-independent input (a second, unbatched tensor): a bigger batch costs almost
    nothing more, so batching pays up to the largest size."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])
    w = helper.make_tensor_value_info("w", TensorProto.FLOAT, [256, 256])
    nodes = [helper.make_node("MatMul", ["w", "w"], ["h0"])]
    nodes += [helper.make_node("MatMul", [f"h{i}", "w"], [f"h{i + 1}"]) for i in range(3)]
    nodes += [helper.make_node("ReduceMean", ["h3"], ["s"], keepdims=0), helper.make_node("Add", ["x", "s"], ["y"])]
    sess = _session(tmp_path, "per_call", nodes, [x, w])
    rng = np.random.default_rng(0)
    wv = rng.standard_normal((256, 256), dtype=np.float32) / 16
    feeds = {b: {"x": rng.standard_normal((b, 8), dtype=np.float32), "w": wv} for b in SIZES}
    res = saturation_of(sess, feeds)
    assert res["saturation_batch"] == 64, res
    # the fit saw it: one call's overhead outweighs the per-sample cost of the largest batch (whose fitted
    # value is timing noise about zero here: -2.6 to 0.6 us against ~1000 us per call on a 2-core Xeon)
    assert res["overhead_us"] > 64 * abs(res["per_sample_us"]), res


def test_a_model_whose_cost_is_per_sample_saturates_at_once(tmp_path):
    """Elementwise work on every value of every sample (no weights to stream, which a batch of one
    would pay alone): a batch costs its size, so batching gains little from the start. Each sample is
    256 KB through 12 ops (~630 us on a 2-core AMD EPYC with AVX-512) so that whatever a call costs on
    its own stays small beside it: with 64 KB samples (~150-300 us) one CI machine fitted 96 us per call
    (batches of 1 and 2 ran 25 % slower per sample) and the rule rightly chose 4; 9 x overhead /
    per_sample must reach 1.4 before the nearest power of two becomes 2, i.e. ~100 us per call here."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 65536])
    names = ["x"] + [f"h{i}" for i in range(11)] + ["y"]
    nodes = [helper.make_node("Tanh" if i % 2 else "Sin", [names[i]], [names[i + 1]]) for i in range(12)]
    sess = _session(tmp_path, "per_sample", nodes, [x])
    rng = np.random.default_rng(0)
    feeds = {b: {"x": rng.standard_normal((b, 65536), dtype=np.float32)} for b in SIZES}
    res = saturation_of(sess, feeds)
    assert res["saturation_batch"] <= 2, res
    assert set(res["samples_per_s_by_batch"]) == {str(b) for b in SIZES}


def test_one_slow_spell_does_not_move_the_saturation_batch(monkeypatch):
    """On a shared box one timing of one batch size can come out several times slow (the raw-curve
    threshold this replaced moved 4 / 8 / 16 / 32 between runs on digits): the median over interleaved
    passes keeps the answer where the clean timings put it (with one pass it moved to 4 or 16)."""
    import build_engines.runtime as runtime

    def timings(spike_at):
        calls = iter(range(10_000))

        def fake(sess, feed, min_runs=5, budget_s=0.1):
            i, b = next(calls), len(feed["x"])
            ms = 0.012 + 0.015 * b                         # digits-like: 12 us per call, 15 us per sample
            return {"p50_ms": ms * (4.0 if i == spike_at else 1.0)}
        return fake

    feeds = {b: {"x": np.zeros((b, 1), np.float32)} for b in SIZES}
    monkeypatch.setattr(runtime, "time_session", timings(spike_at=-1))
    clean = saturation_of(None, feeds)["saturation_batch"]
    for spike in range(len(SIZES) * 3):                # a 4x slow timing at any one (pass, size)
        monkeypatch.setattr(runtime, "time_session", timings(spike_at=spike))
        assert saturation_of(None, feeds)["saturation_batch"] == clean, spike


def test_a_preferred_batch_size_of_one_is_never_tried():
    """Preferred size 1 makes every request its own batch: no batching, already measured as such."""
    from build_engines.spec import load_spec
    from perf.tuning.tuner import preferred_candidates

    spec = load_spec("digits")
    assert all(p != (1,) for p in preferred_candidates(spec, 1, 16))
    assert (4,) in preferred_candidates(spec, 4, 16)


def test_the_final_round_challenger_is_the_best_of_another_family():
    """One lucky measurement of the stage winner must not keep its own neighbour delay as the only
    challenger (the bench-tuner run whose pick then lost 9 % head to head to a preferred size of 8), nor
    keep a config within the band from the final round."""
    from build_engines.spec import ServingConfig
    from perf.tuning.tuner import BAND, Candidate, Measured, contenders

    def m(pref, delay, cap, inst=2):
        s = ServingConfig(dynamic_batching=True, max_batch_size=16, preferred_batch_sizes=pref,
                          max_queue_delay_us=delay, instances=inst)
        return Measured(Candidate("fp32", s), "batching", cap, 20, 9.0, cap, [], 3)
    win = m((), 1000, 7649)
    measured = [win, m((), 500, 6441), m((8,), 2000, 6002), m((8,), 1000, 5580), m((8, 16), 2000, 5800),
                m((8,), 2000, 2000, inst=1)]
    assert [c.serving.preferred_batch_sizes for c in contenders(measured, win, 2)] == [(8,), (8, 16)]
    assert contenders(measured, win, 1)[0].capacity == 6002
    far = m((8,), 2000, 7649 * BAND * 0.99)
    assert contenders([win, far], win, 1) == []


def test_the_final_round_also_meets_the_winners_own_family_at_another_delay():
    """The two digits bench-peer runs (records/bench-peer-digits.json) ended in one family at delay 0 and
    at 2000 us, which the judge put 6-9 % apart: the final round must compare the winner with its own
    family's best other delay (a different max_batch_size is another family), and the head to head's
    bar is FINAL_GAIN, not the stages' GAIN."""
    from build_engines.spec import ServingConfig
    from perf.tuning.tuner import BAND, FINAL_GAIN, GAIN, Candidate, Measured, contenders, final_pick, rival_delay

    def m(delay, cap, mbs=16, inst=2, stage="batching"):
        s = ServingConfig(dynamic_batching=True, max_batch_size=mbs, preferred_batch_sizes=(),
                          max_queue_delay_us=delay, instances=inst)
        return Measured(Candidate("fp32", s), stage, cap, 20, 9.0, cap, [], 3)
    win = m(0, 9000)
    measured = [win, m(1000, 8600), m(2000, 8900), m(2000, 9500, inst=1), m(2000, 9400, mbs=32),
                m(500, 9000 * BAND * 0.99), m(2000, 9900, stage="cache")]
    assert rival_delay(measured, win).serving.max_queue_delay_us == 2000
    assert rival_delay(measured, win).capacity == 8900
    assert [(c.serving.max_batch_size, c.serving.instances) for c in contenders(measured, win, 2)] == [(16, 1), (32, 2)]
    assert rival_delay([win, m(500, 9000 * BAND * 0.99)], win) is None     # out of the band
    assert rival_delay([win, m(0, 9100, inst=2)], win) is None             # the same delay is not a rival
    # the bar: a 4 % gain head to head, in every round, wins the final round though it would not clear a stage
    assert FINAL_GAIN < 1.04 < GAIN
    order = {"incumbent": (0,), "#1": (1,), "#2": (2,)}
    assert final_pick({"incumbent": [9000, 9000], "#1": [9360, 9360], "#2": [9100, 9100]}, order) == "#1"
    near = 9000 * FINAL_GAIN * 0.999
    assert final_pick({"incumbent": [9000, 9000], "#1": [near, near]}, order) == "incumbent"
    assert final_pick({"incumbent": [9000, 9000], "#1": [8000, 8000]}, order) == "incumbent"


def test_a_tie_in_the_final_round_goes_to_the_simplest_config_whichever_the_stages_crowned():
    """The two signals bench-peer runs recorded at 50d6da6 picked "pref none, 2000 us" and
    "pref 4, 500 us", 2-3 % apart and within 3 % of Model Analyzer's "no delay": the final round must
    meet the simplest config of the winner's variant and instances (the anchor), and a more complex
    config wins only by holding more in every round and FINAL_GAIN more in the mean, so that two runs
    whose stages crowned different configs of a tie end on the same one."""
    from build_engines.spec import ServingConfig
    from perf.tuning.tuner import BAND, FINAL_GAIN, Candidate, Measured, anchor, final_pick, simpler

    def m(pref, delay, cap, inst=2, batching=True, variant="int8", stage="batching"):
        s = ServingConfig(dynamic_batching=batching, max_batch_size=8, preferred_batch_sizes=pref,
                          max_queue_delay_us=delay, instances=inst)
        return Measured(Candidate(variant, s), stage, cap, 20, 9.0, cap, [], 3)
    d0, d2000, p4 = m((), 0, 3650), m((), 2000, 3750), m((4,), 500, 3720)
    unbatched_1 = m((), 0, 2000, inst=1, batching=False)
    fp32_d0 = m((), 0, 3600, variant="fp32")
    # the anchor: the winner's variant and instances, the simplest within the band, never the winner itself
    for win in (d2000, p4):
        assert anchor([unbatched_1, fp32_d0, d0, d2000, p4, m((), 0, 9000, stage="cache")], win) is d0
    assert anchor([d0, d2000], d0) is None
    assert anchor([m((), 0, 3750 * BAND * 0.99), d2000], d2000) is None
    # simpler: instances, then batching, delay, preferred sizes, variant (the tuner's order), max_batch_size
    variants = ("fp32", "int8")
    ranked = sorted([p4, d2000, unbatched_1, fp32_d0, d0], key=lambda x: simpler(x, variants))
    assert ranked == [unbatched_1, fp32_d0, d0, p4, d2000]
    # both runs' fields hold the same three configs, whichever was the incumbent; the ties go to d0
    order = {"a": simpler(d0, variants), "b": simpler(d2000, variants), "c": simpler(p4, variants)}
    run1 = {"a": [3660, 3700], "b": [3750, 3640], "c": [3690, 3730]}    # d2000 ahead in one round only
    run2 = {"a": [3640, 3690], "b": [3660, 3650], "c": [3700, 3720]}    # ahead in both, by less than FINAL_GAIN
    assert final_pick(run1, order) == "a" and final_pick(run2, order) == "a"
    # a real gain, in every round, is still taken: the digits case (2000 us 6-9 % above delay 0)
    assert final_pick({"a": [9000, 9100], "b": [9600, 9800], "c": [9000, 9000]}, order) == "b"
    # the walk compares with the pick so far: c beats a, b does not beat c
    assert final_pick({"a": [9000, 9000], "b": [9300, 9300], "c": [9250, 9250]}, order) == "c"
    assert np.mean(run2["c"]) < FINAL_GAIN * np.mean(run2["a"])


def test_queue_delays_bracket_the_time_to_gather_a_batch():
    """The batching stage measures two delays per preferred size: those around the time the batch takes
    to queue at the rate measured with batching on, never past the SLA's room for queueing (SLA/4)."""
    from itertools import product

    from perf.tuning.tuner import aimed_delays, gather_us, queue_delays

    # digits on 2 instances served ~5000/s with batches leaving at once: 8 queue in 1.4 ms, where the
    # grid's best five sat (preferred 8 at 1000-2000 us, the bench-tuner digits run recorded at 4d9e8e3)
    assert aimed_delays(8, 5000, 10) == [1000, 2000]
    # the first request is there: 2 at 10000/s need 100 us more (not 2 / 10000 = 200 us)
    assert gather_us(1, 5000) == 0 and aimed_delays(2, 10000, 10) == [0, 100]
    # no rate measured (nothing met the SLA): the longest two the SLA leaves room for
    assert aimed_delays(8, 0, 10) == [1000, 2000]
    for batch, rate, sla_ms in product([1, 2, 8, 16, 64], [50, 500, 5000, 5e4, 5e6], [0.3, 2, 10, 50]):
        allowed, t = queue_delays(sla_ms), gather_us(batch, rate)
        ds = aimed_delays(batch, rate, sla_ms)
        assert ds == sorted(ds) and set(ds) <= set(allowed) and len(ds) == min(2, len(allowed))
        if allowed[0] < t <= allowed[-1]:
            assert ds[0] < t <= ds[-1] and allowed.index(ds[-1]) - allowed.index(ds[0]) == 1
        else:                          # past either end: the two at that end
            assert ds == (allowed[-2:] if t > allowed[-1] else allowed[:2])


def test_the_final_round_meets_the_other_variants_batched_config_whichever_variant_stage_1_kept():
    """The digits bench-peer recorded at 3d9a129: stage 1 kept FP32 in one run and INT8 in the other, and
    each run's batching stage followed its own variant, so neither final round met the other variant's
    batched configs. Now each run's field holds both: the other variant's best on the incumbent's instance
    count, batched where the incumbent is, within the band, and each challenger once."""
    from build_engines.spec import ServingConfig
    from perf.tuning.tuner import BAND, Candidate, Measured, challengers, rival_variants

    def m(variant, cap, delay=0, pref=(), inst=2, batching=True, mbs=8):
        s = ServingConfig(dynamic_batching=batching, max_batch_size=mbs, preferred_batch_sizes=pref,
                          max_queue_delay_us=delay, instances=inst)
        return Measured(Candidate(variant, s), "batching", cap, 20, 9.0, cap, [], 3)
    fp32_d0, fp32_d250 = m("fp32", 8000, mbs=16), m("fp32", 7900, delay=250, mbs=16)
    int8_d0, int8_p4 = m("int8", 7800), m("int8", 8100, delay=250, pref=(4,))
    int8_1 = m("int8", 9000, inst=1)                      # another instance count: not the variant's rival
    int8_off = m("int8", 8500, batching=False)            # unbatched where the incumbent batches: nor that
    far = m("int8", 8000 * BAND * 0.99, mbs=4)            # out of the band
    measured = [fp32_d0, fp32_d250, int8_d0, int8_p4, int8_1, int8_off, far]
    assert rival_variants(measured, fp32_d0) == [int8_p4]
    assert rival_variants(measured, int8_p4) == [fp32_d0]
    assert rival_variants([fp32_d0, far], fp32_d0) == []
    # either run's field holds a config of each variant, and none twice
    for inc in (fp32_d0, int8_p4):
        field_ = [inc] + challengers(measured, inc)
        assert {c.variant for c in field_} == {"fp32", "int8"}
        assert len({c.label for c in field_}) == len(field_)


def test_the_final_round_meets_the_winner_at_the_other_max_batch_size():
    """The digits bench-peer recorded at b047c22: Model Analyzer's pick (max_batch_size 64, batches leaving
    at once) differed from both of ours only in the cap (8, from the saturation batch 4). The batching stage
    now measures batches that leave at once at the spec's cap too, and the final round meets the winner's
    best batched config at the other cap (same variant and instances, in the band); none for an unbatched one."""
    from build_engines.spec import ServingConfig
    from perf.tuning.tuner import BAND, Candidate, Measured, challengers, rival_cap

    def m(cap, mbs=8, delay=0, pref=(), inst=2, variant="fp32", batching=True):
        s = ServingConfig(dynamic_batching=batching, max_batch_size=mbs, preferred_batch_sizes=pref,
                          max_queue_delay_us=delay, instances=inst)
        return Measured(Candidate(variant, s), "batching", cap, 20, 9.0, cap, [], 3)
    win, wide = m(7500, delay=1000), m(7300, mbs=64)
    wide_p4 = m(7000, mbs=64, pref=(4,), delay=250)
    others = [m(9000, mbs=64, inst=1), m(9000, mbs=64, variant="int8"), m(7500 * BAND * 0.99, mbs=32)]
    measured = [win, m(7400), wide, wide_p4, *others]
    assert rival_cap(measured, win) is wide                       # the best at another cap, of its variant and instances
    assert rival_cap(measured, wide) is win
    assert rival_cap([win, *others], win) is None                 # other instances, variant, or out of the band
    unbatched = m(7000, batching=False)
    assert rival_cap([unbatched, wide], unbatched) is None
    assert wide in challengers(measured, win)
    field_ = [win] + challengers(measured, win)
    assert len({c.label for c in field_}) == len(field_)


def test_the_variant_stage_keeps_a_cap_the_batching_stage_measured():
    """Where the batching stage kept the spec's max_batch_size by measurement, the other variant is tried at
    it too; where the winner's cap was derived from its saturation batch, the other's comes from its own."""
    from pathlib import Path

    from build_engines.spec import ServingConfig, load_spec
    from perf.tuning.tuner import Tuner, max_batch_for

    spec = load_spec("digits")
    t = Tuner("", "", Path("/nonexistent"), spec, sla_ms=10.0, progress=lambda _: None)
    t.saturations = {"fp32": {"saturation_batch": 4}, "int8": {"saturation_batch": 16}}
    derived = max_batch_for(spec, 4)
    assert derived < spec.serving.max_batch_size
    s = ServingConfig(dynamic_batching=True, max_batch_size=derived, preferred_batch_sizes=(4,), instances=2)
    assert t._batching_for("int8", s, t.saturations["fp32"]).max_batch_size == max_batch_for(spec, 16)
    assert t._batching_for("int8", s, t.saturations["fp32"]).preferred_batch_sizes == (16,)
    wide = ServingConfig(dynamic_batching=True, max_batch_size=spec.serving.max_batch_size, instances=2)
    assert t._batching_for("int8", wide, t.saturations["fp32"]).max_batch_size == spec.serving.max_batch_size


def test_the_batching_stage_goes_on_at_the_wider_cap_only_where_it_holds_more():
    """The spec's cap is kept over the derived one where it holds GAIN more, or where only it beats the
    incumbent (unbatched) by GAIN: the simpler cap just missing the bar must not drop batching."""
    from build_engines.spec import ServingConfig
    from perf.tuning.tuner import GAIN, Candidate, Measured, kept_cap

    def m(cap, mbs=8, batching=True):
        s = ServingConfig(dynamic_batching=batching, max_batch_size=mbs, preferred_batch_sizes=(), instances=2)
        return Measured(Candidate("fp32", s), "batching", cap, 20, 9.0, cap, [], 3)
    inc = m(7000, batching=False)
    assert kept_cap(m(7300), m(7300 * GAIN * 1.01, mbs=64), inc).serving.max_batch_size == 64
    assert kept_cap(m(7300), m(7500, mbs=64), inc).serving.max_batch_size == 64      # only it clears the incumbent
    assert kept_cap(m(7400), m(7500, mbs=64), inc).serving.max_batch_size == 8       # both do: the simpler cap
    assert kept_cap(m(7000), m(7100, mbs=64), inc).serving.max_batch_size == 8       # neither: no change
