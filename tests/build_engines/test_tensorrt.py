"""The TensorRT compile. GPU tests run on a GPU node (`make test-gpu`) and skip here with the reason."""

import json

import numpy as np
import pytest

from build_engines.errors import ToolMissing
from build_engines.pipeline import Pipeline, Status
from build_engines.repository import ServingConfig
from build_engines.tensorrt import plan_from_onnx, tensorrt_available

TRT_OK, TRT_WHY = tensorrt_available()
needs_gpu = pytest.mark.skipif(not TRT_OK, reason=f"TensorRT compile skipped: {TRT_WHY}")


@pytest.fixture()
def work(tmp_path, digits_build):
    """A build folder that reuses the session's trained checkpoint (no retraining)."""
    if TRT_OK:
        pytest.skip("this machine has TensorRT and a GPU; the no-TensorRT paths do not apply")
    res, _ = digits_build
    w = tmp_path / "b"
    w.mkdir()
    (w / "digits_cnn.pt").hardlink_to(res.work_dir / "digits_cnn.pt")
    return w


def test_tensorrt_step_is_skipped_with_a_reason_and_the_rest_completes(tmp_path, digits_spec, work):
    out = Pipeline(digits_spec, work, precisions=("fp32",)).run(tmp_path / "repo", bench=False, tensorrt=True)
    step = next(s for s in out.steps if s.name == "tensorrt plan")
    assert step.status is Status.SKIPPED and "TensorRT" in step.detail
    assert out.published == ["digits_fp32"]
    report = json.loads(out.report_path.read_text())
    assert {"name": "tensorrt plan", "status": "SKIPPED"}.items() <= report["steps"][-2].items()


def test_tensorrt_target_without_tensorrt_fails_clearly_and_publishes_nothing(tmp_path, digits_spec, work):
    with pytest.raises(ToolMissing, match="tensorrt_plan needs TensorRT"):
        Pipeline(digits_spec, work, precisions=("fp32",)).run(tmp_path / "repo", target="tensorrt_plan", bench=False)
    assert not (tmp_path / "repo").exists()


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("variant,kind", [("fp32", "onnx"), ("fp16", "onnx"), ("int8", "qdq")])
def test_plan_compiles_strongly_typed_with_the_derived_profile(tmp_path, digits_spec, digits_build, variant, kind):
    import tensorrt as trt
    from polygraphy.backend.trt import EngineFromPath, TrtRunner

    res, _ = digits_build
    serving = ServingConfig(max_batch_size=32, preferred_batch_sizes=(8,))
    plan = tmp_path / f"{variant}.plan"
    meta = plan_from_onnx(res.artifacts[variant][kind], plan, digits_spec, serving, tmp_path / "timing.cache")
    assert meta["tensorrt_version"] == trt.__version__ and (tmp_path / "timing.cache").exists()
    engine = EngineFromPath(str(plan))()
    assert tuple(engine.get_tensor_profile_shape("image", 0)[2]) == (32, 1, 8, 8)
    x, labels = digits_spec.resolve("evaluation")()
    with TrtRunner(engine) as r:
        out = np.concatenate([r.infer({"image": x["image"][i:i + 32]})["logits"] for i in range(0, 352, 32)])
    assert (out.argmax(1) == labels[:352]).mean() >= 0.95


@pytest.mark.gpu
@needs_gpu
def test_timing_cache_is_reused(tmp_path, digits_spec, digits_build):
    res, _ = digits_build
    serving = ServingConfig.from_spec(digits_spec)
    cache = tmp_path / "timing.cache"
    plan_from_onnx(res.artifacts["fp32"]["onnx"], tmp_path / "a.plan", digits_spec, serving, cache)
    size = cache.stat().st_size
    plan_from_onnx(res.artifacts["fp32"]["onnx"], tmp_path / "b.plan", digits_spec, serving, cache)
    assert cache.stat().st_size >= size > 0
