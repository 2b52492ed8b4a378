
import numpy as np
import onnx
import pytest

from build_engines import precision
from build_engines.errors import CalibrationError, GateRefused
from build_engines.gate import Evidence, gate, outputs_of
from build_engines.isa import exact_on
from build_engines.pipeline import Pipeline
from build_engines.spec import load_spec


def test_int8_has_symmetric_qdq_and_per_channel_weights(digits_build):
    res, _ = digits_build
    q = precision.qdq_summary(res.artifacts["int8"]["qdq"])
    assert q["quantize_linear"] > 0 and q["dequantize_linear"] > q["quantize_linear"]
    assert q["activation_zero_points"] == [0] and q["activation_zero_point_dtypes"] == ["int8"]
    assert q["per_channel_weight_dq"] >= 4   # two Convs and two Gemms
    cpu = precision.qdq_summary(res.artifacts["int8"]["cpu"])
    assert cpu["activation_zero_point_dtypes"] == ["uint8"]


def test_int8_bias_stays_fp32(digits_build):
    res, _ = digits_build
    m = onnx.load(str(res.artifacts["int8"]["qdq"]))
    int32 = [i.name for i in m.graph.initializer if i.data_type == onnx.TensorProto.INT32]
    assert not int32, f"int32 bias would be rejected by TensorRT's parser: {int32}"


def test_every_digits_variant_passes_with_the_kernels_that_serve_it(digits_build):
    """Measured outcome on any x86 CPU: the CPU recipe follows the ISA, so the served INT8 keeps FP32's
    answers (an AVX2-only CPU without it saw agreement 0.986 and 25 % logit error)."""
    res, _ = digits_build
    assert res.gates["fp32"].value >= 95.0
    assert res.calibration["cpu_recipe"] == ("full" if exact_on(res.calibration["int8_isa"]) else "reduce_range")
    for name in ("fp16", "int8_qdq", "int8_cpu"):
        g = res.gates[name]
        assert g.passed and g.gated and not g.reasons, g.reasons
        assert g.details["fp32"]["agreement"] >= 0.995 and g.details["fp32"]["relative_error"] <= 0.05
        assert g.details["batch_invariance"]["relative_error"] < 1e-3
    kernel = res.gates["int8_cpu"].details["kernel"]
    assert kernel["agreement"] == 1.0 and kernel["relative_error"] < 0.01
    assert "kernel" not in res.gates["int8_qdq"].details   # judged by exact Q/DQ arithmetic, as TensorRT computes


def test_fp16_keeps_fp32_io_and_computes_in_fp16(digits_build):
    res, _ = digits_build
    m = onnx.load(str(res.artifacts["fp16"]["onnx"]))
    assert {v.type.tensor_type.elem_type for v in (*m.graph.input, *m.graph.output)} == {onnx.TensorProto.FLOAT}
    fp16_weights = [i for i in m.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert len(fp16_weights) >= 8


def test_calibration_uses_training_images_only(digits_spec):
    from build_engines.examples.digits import splits
    x_tr, _, x_te, _ = splits()
    calib = np.concatenate([b["image"] for b in digits_spec.resolve("calibration")()])
    train_rows = {r.tobytes() for r in x_tr}
    test_only = {r.tobytes() for r in x_te} - train_rows
    assert all(r.tobytes() in train_rows for r in calib)
    assert not any(r.tobytes() in test_only for r in calib)


def test_calibration_cache_skips_recalibration(digits_build, tmp_path):
    res, _ = digits_build
    fp32 = res.artifacts["fp32"]["onnx"]
    feeds = [{"image": np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32)}]
    s = precision.CalibrationSettings(method="minmax")
    c1, hit1 = precision.calibrate(fp32, feeds, s, tmp_path)
    c2, hit2 = precision.calibrate(fp32, feeds, s, tmp_path)
    assert (hit1, hit2) == (False, True) and c1 == c2
    _, hit3 = precision.calibrate(fp32, feeds, precision.CalibrationSettings(method="percentile"), tmp_path)
    assert not hit3


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_other_calibration_methods_make_valid_qdq_and_the_gate_judges_them(digits_build, digits_spec, tmp_path, method):
    res, _ = digits_build
    fp32 = res.artifacts["fp32"]["onnx"]
    feeds = precision.collect_calibration(digits_spec.resolve("calibration")(), ["image"])
    s = precision.CalibrationSettings(method=method)
    cache, _ = precision.calibrate(fp32, feeds, s, tmp_path)
    assert method in cache.name
    out = precision.qdq_onnx_from_onnx(fp32, tmp_path / "q.onnx", cache, s)
    assert precision.qdq_summary(out)["activation_zero_points"] == [0]
    inputs, labels = digits_spec.resolve("evaluation")()
    logits = outputs_of(out, inputs, exact=True)
    ref = outputs_of(fp32, inputs)
    g = gate(digits_spec, f"int8_{method}", Evidence(logits), ref, labels)
    # measured: both keep >= 99 % of FP32's answers; entropy loses 0.56 pp of top-1 on the labels, over
    # the 0.5 budget, and the refusal says so in words
    assert g.details["fp32"]["agreement"] >= 0.99
    assert g.passed or all("top-1" in r and "budget 0.5" in r for r in g.reasons)


def test_no_calibration_data_is_refused():
    with pytest.raises(CalibrationError, match="real calibration data"):
        precision.collect_calibration(None, ["image"])
    with pytest.raises(CalibrationError, match="no batches"):
        precision.collect_calibration(iter(()), ["image"])
    with pytest.raises(CalibrationError, match="unknown"):
        precision.CalibrationSettings(method="magic")


def _digits_spec_with(tmp_path, calibration: str):
    text = (load_spec("digits").path.read_text()
            .replace('calibration = "build_engines.examples.digits:calibration_batches"', f'calibration = "{calibration}"'))
    p = tmp_path / "digits_broken.toml"
    p.write_text(text)
    return load_spec(p)


def test_broken_calibration_is_refused_by_the_gate_and_nothing_is_published(tmp_path, digits_build):
    res, _ = digits_build
    spec = _digits_spec_with(tmp_path, "model_fixtures:constant_calibration")
    work = tmp_path / "build"
    work.mkdir()
    (work / "digits_cnn.pt").hardlink_to(res.work_dir / "digits_cnn.pt")  # same trained weights, no retraining
    repo = tmp_path / "repo"
    with pytest.raises(GateRefused) as e:
        Pipeline(spec, work).run(repo, bench=False, tensorrt=False)
    msg = str(e.value)
    assert "int8" in msg and "agreement with FP32" in msg and "budget 0.5" in msg and "Fix:" in msg
    assert not repo.exists()


def test_polygraphy_comparison_of_variants(digits_build, digits_spec):
    from build_engines.compare import compare_variants
    from build_engines.errors import BuildError
    res, _ = digits_build
    assert compare_variants(digits_spec, res.work_dir, ["fp32", "int8_qdq"], atol=0.5, rtol=0.5, samples=4)
    assert not compare_variants(digits_spec, res.work_dir, ["fp32", "int8_qdq"], atol=0.0, rtol=0.0, samples=4)
    with pytest.raises(BuildError, match="unknown variant"):
        compare_variants(digits_spec, res.work_dir, ["fp32", "int4"], 0.1, 0.1, 2)


def test_a_step_reruns_alone_from_the_work_folder(digits_build, digits_spec, tmp_path):
    """`tck engines --only int8,gate`: the INT8 step and the gate again, from the exported ONNX on
    disk; the other steps are SKIPPED with the reason, and publish refuses what was not gated."""
    import shutil
    from build_engines.errors import BuildError
    from build_engines.pipeline import Status
    res, _ = digits_build
    work = tmp_path / "build"
    shutil.copytree(res.work_dir, work)
    again = Pipeline(digits_spec, work).run(None, bench=False, tensorrt=False, only=("int8", "gate"))
    status = {s.name: (s.status, s.detail) for s in again.steps}
    assert status["int8 calibrate + Q/DQ"][0] is Status.PASSED and status["accuracy gate"][0] is Status.PASSED
    assert status["export onnx"] == (Status.SKIPPED, "not selected (--only int8,gate)")
    assert again.gates["int8_cpu"].passed and again.calibration["cache_hit"]      # ranges reused from the cache
    with pytest.raises(BuildError, match="no passing gate verdict"):
        Pipeline(digits_spec, work).run(tmp_path / "repo", bench=False, tensorrt=False, only=("publish",))
    assert not (tmp_path / "repo").exists()
    with pytest.raises(BuildError, match="unknown step"):
        Pipeline(digits_spec, work).run(None, only=("calibrate",))
    with pytest.raises(BuildError, match="step gate needs .*fp32.onnx; run the export step first"):
        Pipeline(digits_spec, tmp_path / "empty").run(None, only=("gate",))


def test_measuring_refuses_a_served_model_that_is_not_the_built_one(digits_build, tmp_path):
    """After a failed rebuild, build/ and the repository can disagree: perf, tune and report measure
    through ensure_published, which refuses the mismatch in one line saying what to rebuild."""
    import shutil
    from build_engines.errors import BuildError
    from build_engines.pipeline import ensure_published
    res, repo = digits_build
    build = tmp_path / "build"
    shutil.copytree(res.work_dir, build / "digits")
    ensure_published("digits", repo, build)                     # same artifacts: nothing to do
    (build / "digits" / "int8_cpu.onnx").write_bytes(b"a different model")
    with pytest.raises(BuildError, match=r"digits_int8 is not what build/ holds \(.*changed since it was published\).*"
                                         r"make engines MODEL=digits"):
        ensure_published("digits", repo, build)


def test_dynamic_int8_counts_its_lstm_table_and_matmul_as_int8(tmp_path):
    """Dynamic INT8 of a token model (embedding table -> LSTM -> linear): ONNX Runtime's
    DynamicQuantizeLSTM, the 8-bit table Gather and the integer MatMul are all INT8; nothing is
    said to stay FP32, and the FP32 graph is said as all FP32."""
    import torch

    class Tagger(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(300, 32)
            self.lstm = torch.nn.LSTM(32, 48, batch_first=True)
            self.head = torch.nn.Linear(48, 5)

        def forward(self, tokens):
            out, _ = self.lstm(self.emb(tokens))
            return self.head(out[:, -1])

    torch.manual_seed(0)
    src = tmp_path / "tagger.onnx"
    torch.onnx.export(Tagger().eval(), (torch.randint(0, 300, (2, 12)),), str(src), input_names=["tokens"],
                      output_names=["tags"], dynamo=False, opset_version=17,
                      dynamic_axes={"tokens": {0: "b", 1: "t"}, "tags": {0: "b"}})
    dst = precision.dynamic_int8_onnx_from_onnx(src, tmp_path / "tagger_int8.onnx", precision.CalibrationSettings(
        ops=("MatMul", "Gather", "LSTM")))
    int8 = precision.coverage_of(dst, "int8")
    assert int8.reduced_ops == {"Gather": 1, "LSTM": 1, "MatMul": 1}, int8
    assert int8.float_ops == {} and "stays FP32: none;" in int8.text()
    assert int8.weights_reduced > 0.9                       # the table, the LSTM's and the head's weights
    fp32 = precision.coverage_of(src, "fp32")
    assert fp32.reduced_ops == {} and fp32.weights_reduced == 0.0
    assert fp32.float_ops == {"Gather": 1, "LSTM": 1, "Gemm": 1}, fp32
