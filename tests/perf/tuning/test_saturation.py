"""The in-process saturation batch that bounds the tuner's batching space, on two real ONNX graphs whose
cost is, by construction, per call or per sample."""

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


def test_a_model_whose_cost_is_per_sample_saturates_at_once(tmp_path):
    """Elementwise work on every value of every sample (no weights to stream, which a batch of one
    would pay alone): a batch costs its size, so batching gains little from the start."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16384])
    names = ["x"] + [f"h{i}" for i in range(11)] + ["y"]
    nodes = [helper.make_node("Tanh" if i % 2 else "Sin", [names[i]], [names[i + 1]]) for i in range(12)]
    sess = _session(tmp_path, "per_sample", nodes, [x])
    rng = np.random.default_rng(0)
    feeds = {b: {"x": rng.standard_normal((b, 16384), dtype=np.float32)} for b in SIZES}
    res = saturation_of(sess, feeds)
    assert res["saturation_batch"] <= 2, res
    assert set(res["samples_per_s_by_batch"]) == {str(b) for b in SIZES}
