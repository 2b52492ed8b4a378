"""ONNX Runtime helpers shared by the build, the gate and the benchmarks."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np


def ort_session(path: Path | str, threads: int = 0):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


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
    return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
            "platform": platform.platform()}
