"""`make bench`: ONNX Runtime in-process speed of INT8 against FP32 (the TensorRT-style Q/DQ graph
and the CPU artifact), at batch 1 and 32, with the fidelity the gate measured, per model.

Each figure names the CPU's integer ISA and the CPU INT8 recipe it was measured with, and says
whether the model's data is real, synthetic or random ("speed only, not gated"). Speed ratios come
from interleaved replicates (FP32, INT8 Q/DQ, INT8 CPU, FP32, ... in turn) with the median and a
95 % bootstrap interval, so a noisy shared machine shows as a wide interval instead of a wrong ratio.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from build_engines import data
from build_engines.pipeline import Pipeline
from build_engines.runtime import ort_session, time_session
from build_engines.spec import load_spec
from perf.measure import replicates
from perf.measure.results import BenchRecord, save

BATCHES = (1, 32)
MODELS = ("digits", "signals", "resnet18_bench")


def interval(values: list[float]) -> dict[str, float]:
    """Median and 95 % bootstrap interval, as the bench record stores it."""
    from dataclasses import asdict
    return asdict(replicates.interval(values))


def bench_model(spec_name: str, build_dir: Path, threads: int, budget_s: float, replicates: int) -> dict:
    spec = load_spec(spec_name)
    res = Pipeline(spec, build_dir / spec.name, precisions=("fp32", "int8")).run(None, bench=False, tensorrt=False)
    batches = spec.evaluation_batches()
    arts = {"fp32": res.artifacts["fp32"]["onnx"], "int8_qdq": res.artifacts["int8"]["qdq"],
            "int8_cpu": res.artifacts["int8"]["cpu"]}
    sessions = {name: ort_session(path, threads=threads) for name, path in arts.items()}
    feeds = {b: data.typical_feed(spec, batches, b) for b in BATCHES}
    runs: dict[str, dict[int, list[float]]] = {n: {b: [] for b in BATCHES} for n in arts}
    for _ in range(replicates):           # A B C A B C ...: drift hits every variant alike
        for b in BATCHES:
            for name, sess in sessions.items():
                runs[name][b].append(time_session(sess, feeds[b], min_runs=5, budget_s=budget_s)["samples_per_s"])
    ratios = {f"{v}_over_fp32_batch_{b}": interval([x / y for x, y in zip(runs[v][b], runs["fp32"][b])])
              for v in ("int8_qdq", "int8_cpu") for b in BATCHES}
    fidelity = {name: {"gate": "not gated (speed only)" if not g.gated else "passed" if g.passed else "refused",
                       **{k: g.details["fp32"][k] for k in ("agreement", "cosine_mean", "nn_agreement", "relative_error")
                          if k in g.details["fp32"]}}
                for name, g in res.gates.items() if name != "fp32"}
    return {"model": spec.name, "data": spec.data_kind, "gated": spec.gated, "threads": threads,
            "int8_isa": res.calibration["int8_isa"], "cpu_recipe": res.calibration["cpu_recipe"],
            "samples_per_s": {n: {f"batch_{b}": interval(r) for b, r in per.items()} for n, per in runs.items()},
            "ratios": ratios, "fidelity": fidelity}


def run(build_dir: Path, threads: int = 1, budget_s: float = 0.4, replicates: int = 7, models=MODELS) -> Path:
    results = [bench_model(m, build_dir, threads, budget_s, replicates) for m in models]
    return save(BenchRecord(model="+".join(models), models=results,
                             method=f"{replicates} interleaved replicates of repeated InferenceSession.run (median of "
                                    "each, warmup excluded); ratio = median and 95 % bootstrap interval",
                             command="make bench"), name="ort-int8")


def summary_lines(doc: BenchRecord) -> list[str]:
    """What `make bench` prints: one block per model."""
    out = []
    for m in doc.models:
        label = {"real": "real data, gated", "synthetic": "synthetic data (generated), gated",
                 "random": "random data: speed only, not gated"}[m["data"]]
        out.append(f"{m['model']} ({label}); CPU {m['int8_isa']}, recipe {m['cpu_recipe']}, {m['threads']} thread(s)")
        for v in ("int8_qdq", "int8_cpu"):
            speed = ", ".join(f"batch {b}: {replicates.Interval(**m['ratios'][f'{v}_over_fp32_batch_{b}']).text()}"
                              for b in BATCHES)
            f = m["fidelity"][v]
            fid = (f"agreement {f['agreement']:.4f}" if "agreement" in f else f"cosine {f['cosine_mean']:.4f}")
            note = " (TensorRT artifact: CPU speed for reference only; fidelity by exact Q/DQ arithmetic)" \
                if v == "int8_qdq" else ""
            out.append(f"  {v:9s} speed vs FP32 {speed}; vs FP32 {fid}, rel err {f['relative_error']:.4f}; {f['gate']}{note}")
    return out
