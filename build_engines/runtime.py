"""ONNX Runtime helpers shared by the build, the gate and the benchmarks."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np


def ort_session(path: Path | str, threads: int = 0, exact: bool = False):
    """An ONNX Runtime CPU session. ``exact=True`` gives the graph's own arithmetic instead of the
    fused integer kernels that serve: graph optimizations off (QuantizeLinear -> DequantizeLinear ->
    float op, as TensorRT defines Q/DQ), and integer MatMul/Conv rewritten to float arithmetic."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    model: str | bytes = str(path)
    if exact:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        model = exact_integer_model(path)
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def exact_integer_model(path: Path | str) -> str | bytes:
    """Rewrite MatMulInteger/ConvInteger (dynamic INT8) to float arithmetic on the same integers, which
    is exact (double for MatMul; float32 for Conv, rounded back), so no 16-bit saturation can occur."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.load(str(path))
    if not any(n.op_type in ("MatMulInteger", "ConvInteger") for n in m.graph.node):
        return str(path)
    inits = {i.name: i for i in m.graph.initializer}
    nodes = []
    for k, n in enumerate(m.graph.node):
        if n.op_type not in ("MatMulInteger", "ConvInteger"):
            nodes.append(n)
            continue
        conv = n.op_type == "ConvInteger"
        to = TensorProto.FLOAT if conv else TensorProto.DOUBLE
        p = f"_exact{k}_"
        ins = list(n.input) + [""] * (4 - len(n.input))
        operands = []
        for j, (x, zp) in enumerate(((ins[0], ins[2]), (ins[1], ins[3]))):
            nodes.append(helper.make_node("Cast", [x], [f"{p}x{j}"], to=to))
            val = f"{p}x{j}"
            if zp:
                nodes.append(helper.make_node("Cast", [zp], [f"{p}zp{j}"], to=to))
                zpv = f"{p}zp{j}"
                if conv and j == 1 and zp in inits and len(inits[zp].dims) == 1 and ins[1] in inits:
                    shape = [inits[zp].dims[0]] + [1] * (len(inits[ins[1]].dims) - 1)  # per output channel
                    m.graph.initializer.append(numpy_helper.from_array(np.array(shape, np.int64), f"{p}shape"))
                    nodes.append(helper.make_node("Reshape", [zpv, f"{p}shape"], [f"{p}zpr{j}"]))
                    zpv = f"{p}zpr{j}"
                nodes.append(helper.make_node("Sub", [val, zpv], [f"{p}c{j}"]))
                val = f"{p}c{j}"
            operands.append(val)
        if conv:
            nodes.append(helper.make_node("Conv", operands, [f"{p}y"], **{a.name: helper.get_attribute_value(a) for a in n.attribute}))
            nodes.append(helper.make_node("Round", [f"{p}y"], [f"{p}r"]))
        else:
            nodes.append(helper.make_node("MatMul", operands, [f"{p}r"]))
        nodes.append(helper.make_node("Cast", [f"{p}r"], list(n.output), to=TensorProto.INT32))
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m.SerializeToString()


def run_batched(sess, inputs: dict[str, np.ndarray], batch_size: int = 64) -> list[np.ndarray]:
    """Run a whole data set through a session in batches; returns the concatenated outputs."""
    n = len(next(iter(inputs.values())))
    parts: list[list[np.ndarray]] = []
    for i in range(0, n, batch_size):
        parts.append(sess.run(None, {k: v[i : i + batch_size] for k, v in inputs.items()}))
    return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]


def time_session(sess, feed: dict[str, np.ndarray], min_runs: int = 20, budget_s: float = 1.0) -> dict[str, float]:
    """Median latency of repeated runs, warmup excluded; throughput in samples per second."""
    for _ in range(3):
        sess.run(None, feed)
    times: list[float] = []
    t_end = time.perf_counter() + budget_s
    while len(times) < min_runs or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
        if len(times) >= 5000:
            break
    batch = len(next(iter(feed.values())))
    med = float(np.median(times))
    return {"batch": batch, "runs": len(times), "p50_ms": med * 1e3, "p90_ms": float(np.percentile(times, 90)) * 1e3,
            "samples_per_s": batch / med}


def environment() -> dict:
    import onnxruntime
    import torch

    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    from build_engines.isa import cpu_flags, flags_isa, int8_isa, kernel_probe

    return {"host": platform.node(), "cpu": cpu, "int8_isa": int8_isa(), "int8_flags": flags_isa(cpu_flags()),
            "int8_probe": kernel_probe(), "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
            "platform": platform.platform()}
