"""`make bench`: ONNX Runtime in-process throughput, FP32 vs INT8 (TensorRT-style Q/DQ and the CPU
twin), at batch 1 and 32, for the digits CNN and a ResNet-18-sized CNN. One results file per run."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from build_engines.pipeline import Pipeline
from build_engines.runtime import ort_session, time_session
from build_engines.spec import load_spec
from perf.results import write_result

BATCHES = (1, 32)


def bench_model(spec_name: str, build_dir: Path, threads: int, budget_s: float) -> dict:
    spec = load_spec(spec_name)
    res = Pipeline(spec, build_dir / spec.name, precisions=("fp32", "int8")).run(None, bench=False, tensorrt=False)
    inputs, _ = spec.resolve("evaluation")()
    x = next(iter(inputs.values()))
    big = np.concatenate([x] * (32 // len(x) + 1))[:32] if len(x) < 32 else x[:32]
    arts = {"fp32": res.artifacts["fp32"]["onnx"], "int8_qdq": res.artifacts["int8"]["qdq"], "int8_cpu": res.artifacts["int8"]["cpu"]}
    rows = {}
    for name, path in arts.items():
        sess = ort_session(path, threads=threads)
        rows[name] = {f"batch_{b}": time_session(sess, {spec.inputs[0].name: big[:b]}, min_runs=5, budget_s=budget_s)
                      for b in BATCHES}
    ratios = {f"{v}_over_fp32_batch_{b}": rows[v][f"batch_{b}"]["samples_per_s"] / rows["fp32"][f"batch_{b}"]["samples_per_s"]
              for v in ("int8_qdq", "int8_cpu") for b in BATCHES}
    return {"model": spec.name, "threads": threads, "timings": rows, "ratios": ratios,
            "gates": {k: g.as_dict() for k, g in res.gates.items()}}


def run(build_dir: Path, threads: int = 1, budget_s: float = 2.0, models=("digits", "resnet18_bench")) -> Path:
    results = [bench_model(m, build_dir, threads, budget_s) for m in models]
    return write_result("bench-ort-int8", {"model": "+".join(models), "models": results,
                                           "method": "median of repeated InferenceSession.run, warmup excluded",
                                           "command": "make bench"}, name="ort-int8")
