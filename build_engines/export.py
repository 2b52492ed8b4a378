"""PyTorch -> ONNX with dynamic axes, checked against PyTorch on real inputs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx
import torch

from build_engines.errors import ExportMismatch, SpecError
from build_engines.spec import ModelSpec

log = logging.getLogger(__name__)


def _dynamic_axes(spec: ModelSpec) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    for t in (*spec.inputs, *spec.outputs):
        a = {0: "batch"}
        for i, d in enumerate(t.shape, start=1):
            if d == -1:
                a[i] = f"{t.name}_dim{i}" if t in spec.outputs else f"dim{i}"
        axes[t.name] = a
    return axes


def onnx_from_torch(model: torch.nn.Module, spec: ModelSpec, sample: dict[str, np.ndarray], path: Path) -> Path:
    """Export with a dynamic batch axis (and every -1 axis of the spec) into one self-contained file."""
    names = [t.name for t in spec.inputs]
    missing = [n for n in names if n not in sample]
    if missing:
        raise SpecError(f"{spec.path}: inputs {missing} are declared in the spec but the sample data has {sorted(sample)}")
    args = tuple(torch.from_numpy(np.ascontiguousarray(sample[n])) for n in names)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".export.onnx")
    with torch.no_grad():
        prog = torch.onnx.export(
            model, args, dynamo=True, input_names=names, output_names=[t.name for t in spec.outputs],
            dynamic_axes=_dynamic_axes(spec), opset_version=spec.opset, optimize=True, verbose=False,
        )
    proto = prog.model_proto
    onnx.checker.check_model(proto, full_check=False)
    onnx.save_model(proto, tmp, save_as_external_data=False)
    tmp.replace(path)
    return path


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


def check_onnx_against_torch(
    model: torch.nn.Module, onnx_path: Path, spec: ModelSpec, batches: Iterable[dict[str, np.ndarray]]
) -> dict[str, float]:
    """Run both on each batch; raise ExportMismatch with the worst difference when outside tolerance."""
    from build_engines.runtime import ort_session

    sess = ort_session(onnx_path)
    names = [t.name for t in spec.inputs]
    worst, worst_where, checked = 0.0, "", 0
    for batch in batches:
        with torch.no_grad():
            ref = model(*(torch.from_numpy(np.ascontiguousarray(batch[n])) for n in names))
        ref = ref if isinstance(ref, (tuple, list)) else (ref,)
        got = sess.run(None, {n: batch[n] for n in names})
        for out, r, g in zip(spec.outputs, ref, got):
            r = r.numpy()
            if r.shape != g.shape:
                raise ExportMismatch(f"output {out.name!r}: ONNX shape {g.shape} != PyTorch shape {r.shape}")
            d = max_abs_diff(r, g)
            if d > worst:
                worst, worst_where = d, f"{out.name} at batch {len(g)}"
            if not np.allclose(g, r, atol=spec.atol, rtol=spec.rtol):
                raise ExportMismatch(
                    f"ONNX Runtime disagrees with PyTorch on output {out.name!r} (batch {len(g)}): worst |diff| {d:.3g} "
                    f"> atol {spec.atol} + rtol {spec.rtol}; check unsupported ops or loosen [export] atol/rtol in {spec.path}"
                )
        checked += 1
    if not checked:
        raise SpecError(f"{spec.path}: no batches to check the export with ([data] evaluation gave nothing)")
    log.info("export check: %d batches, worst |diff| %.3g (%s)", checked, worst, worst_where)
    return {"batches": checked, "max_abs_diff": worst}
