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


def _dynamic_shapes(spec: ModelSpec) -> tuple[dict[int, object], ...]:
    """torch.export Dims: axis 0 is the batch, and every -1 axis of the spec is dynamic (shared by name)."""
    from torch.export import Dim

    dims: dict[str, object] = {"batch": Dim("batch", max=1 << 16)}
    out = []
    for t in spec.inputs:
        d = {0: dims["batch"]}
        for i, size in enumerate(t.shape, start=1):
            if size == -1:
                d[i] = dims.setdefault(f"dim{i}", Dim(f"dim{i}", max=1 << 16))
        out.append(d)
    return tuple(out)


def onnx_from_torch(model: torch.nn.Module, spec: ModelSpec, sample: dict[str, np.ndarray], path: Path) -> Path:
    """Export with a dynamic batch axis (and every -1 axis of the spec) into one self-contained file."""
    names = [t.name for t in spec.inputs]
    missing = [n for n in names if n not in sample]
    if missing:
        raise SpecError(f"{spec.path}: inputs {missing} are declared in the spec but the sample data has {sorted(sample)}")
    for i, t in enumerate(spec.inputs):
        per = tuple(sample[t.name].shape[1:])
        if len(per) != len(t.shape) or any(d != -1 and d != s for d, s in zip(t.shape, per)):
            raise SpecError(f"{spec.path}: field 'inputs[{i}].shape' is {list(t.shape)} but the model's data has "
                            f"per-sample shape {list(per)} for {t.name!r}")
    args = tuple(torch.from_numpy(np.ascontiguousarray(sample[n])) for n in names)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".export.onnx")
    with torch.no_grad():
        prog = torch.onnx.export(
            model, args, dynamo=True, input_names=names,
            dynamic_shapes=_dynamic_shapes(spec), opset_version=spec.opset, optimize=True, verbose=False,
        )
    proto = _rename_outputs(prog.model_proto, [t.name for t in spec.outputs])
    onnx.checker.check_model(proto, full_check=False)
    _check_graph_shapes(proto, spec)
    onnx.save_model(proto, tmp, save_as_external_data=False)
    tmp.replace(path)
    return path


def _rename_outputs(proto: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """Give the graph outputs the spec's names. The exporter's ``output_names`` can collide with internal
    values (aten.embedding's output is called "embedding"), so move such values aside first."""
    g = proto.graph
    if len(g.output) != len(names):
        raise SpecError(f"the model returns {len(g.output)} outputs, the spec declares {len(names)}")
    def rename(old: str, new: str) -> None:
        for n in g.node:
            n.input[:] = [new if x == old else x for x in n.input]
            n.output[:] = [new if x == old else x for x in n.output]
        for coll in (g.output, g.value_info):
            for v in coll:
                if v.name == old:
                    v.name = new
    current = [o.name for o in g.output]
    for old, new in zip(current, names):
        if old == new:
            continue
        if any(new in n.output for n in g.node) or any(i.name == new for i in g.input):
            rename(new, f"{new}__internal")
        rename(old, new)
    return proto


def _check_graph_shapes(proto: onnx.ModelProto, spec: ModelSpec) -> None:
    """The exported graph's static dims must be the spec's (the config.pbtxt is written from the spec)."""
    graph = {v.name: v for v in (*proto.graph.input, *proto.graph.output)}
    for kind, tensors in (("inputs", spec.inputs), ("outputs", spec.outputs)):
        for i, t in enumerate(tensors):
            if t.name not in graph:
                raise SpecError(f"{spec.path}: field '{kind}[{i}].name' is {t.name!r}, not a tensor of the exported graph")
            dims = graph[t.name].type.tensor_type.shape.dim[1:]
            got = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
            if len(got) != len(t.shape) or any(s != -1 and g != -1 and s != g for s, g in zip(t.shape, got)):
                raise SpecError(f"{spec.path}: field '{kind}[{i}].shape' is {list(t.shape)} but the exported graph "
                                f"has {got} for {t.name!r}")


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
