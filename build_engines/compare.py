"""Polygraphy comparison of built variants: per-output error statistics on held-out inputs.

The TensorRT artifact (int8_qdq) runs with exact Q/DQ arithmetic, the arithmetic TensorRT does;
the CPU variants run as they serve, with ONNX Runtime's kernels for this CPU."""

from __future__ import annotations

from pathlib import Path

from build_engines.errors import BuildError
from build_engines.spec import ModelSpec

FILES = {"fp32": "fp32.onnx", "fp16": "fp16.onnx", "int8_qdq": "int8_qdq.onnx", "int8_cpu": "int8_cpu.onnx"}


def compare_variants(spec: ModelSpec, work_dir: Path, variants: list[str], atol: float, rtol: float, samples: int) -> bool:
    from polygraphy.backend.onnxrt import OnnxrtRunner
    from polygraphy.comparator import Comparator, SimpleCompareFunc

    from build_engines.runtime import ort_session

    runners = []
    for v in variants:
        if v not in FILES:
            raise BuildError(f"--variants: unknown variant {v!r}; use {', '.join(FILES)}")
        path = Path(work_dir) / FILES[v]
        if not path.exists():
            raise BuildError(f"{path} not built yet; run `make engines MODEL={spec.name}` first")
        runners.append(OnnxrtRunner(lambda path=path, exact=v == "int8_qdq": ort_session(path, exact=exact), name=v))
    inputs = spec.evaluation_batches()[0][0]
    n = min(samples, len(next(iter(inputs.values()))))
    data = [{k: x[i:i + 1] for k, x in inputs.items()} for i in range(n)]
    results = Comparator.run(runners, data_loader=data)
    return bool(Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(atol=atol, rtol=rtol)))
