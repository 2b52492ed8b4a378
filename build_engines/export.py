"""PyTorch -> ONNX with dynamic axes, checked against PyTorch on real inputs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx
import torch

from build_engines.errors import ExportMismatch, SpecError
from build_engines.spec import DTYPES, ModelSpec

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


_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.INT64: "int64",
                onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8",
                onnx.TensorProto.BOOL: "bool", onnx.TensorProto.DOUBLE: "float64"}


def _dtype_name(dt) -> str:
    """numpy or torch dtype -> the spec's spelling (float32, int64, ...)."""
    return str(dt).removeprefix("torch.")


def _shape_matches(declared: tuple[int, ...], actual: tuple[int, ...]) -> bool:
    return len(declared) == len(actual) and all(d == -1 or d == a for d, a in zip(declared, actual))


def check_data_against_spec(spec: ModelSpec, feed: dict[str, np.ndarray]) -> None:
    """The evaluation data is what the model is exported and served with: each input's dtype and
    per-sample shape must be the spec's, or the published config would not match the graph."""
    for i, t in enumerate(spec.inputs):
        x = feed[t.name]
        got = _dtype_name(x.dtype)
        if t.dtype != "string" and got != t.dtype:
            fix = (f"declare dtype = \"{got}\" (or give the data as {t.dtype})" if got in DTYPES else
                   f"give the data as {t.dtype} (.astype(np.{t.dtype})): {got} is not served")
            raise SpecError(f"{spec.path}: field 'inputs[{i}].dtype': input {t.name!r} is declared {t.dtype}, the "
                            f"model's evaluation data is {got}; {fix}", field=f"inputs[{i}].dtype")
        if not _shape_matches(t.shape, tuple(x.shape[1:])):
            raise SpecError(f"{spec.path}: field 'inputs[{i}].shape': input {t.name!r} is declared per-sample "
                            f"{list(t.shape)}, the model's evaluation data has {list(x.shape[1:])}",
                            field=f"inputs[{i}].shape")


def check_torch_against_spec(model: torch.nn.Module, spec: ModelSpec, feed: dict[str, np.ndarray]) -> None:
    """One forward on a few held-out samples (``feed`` already checked by ``check_data_against_spec``):
    the outputs PyTorch returns (count, dtype, per-sample shape) must be the ones the spec declares."""
    names = [t.name for t in spec.inputs]
    args = tuple(torch.from_numpy(np.ascontiguousarray(feed[n][:2])) for n in names)
    try:
        with torch.no_grad():
            out = model(*args)
    except Exception as e:   # the user's forward: one line naming what it was given
        given = ", ".join(f"{n} {_dtype_name(a.dtype)} {list(a.shape)}" for n, a in zip(names, args))
        first = str(e).splitlines()[0] if str(e) else ""
        raise SpecError(f"{spec.path}: the model's forward failed on its evaluation data ({given}): "
                        f"{type(e).__name__}: {first}") from e
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    if len(outs) != len(spec.outputs) or not all(isinstance(o, torch.Tensor) for o in outs):
        raise SpecError(f"{spec.path}: field 'outputs': the model returns {len(outs)} output(s) "
                        f"({', '.join(type(o).__name__ for o in outs)}), the spec declares {len(spec.outputs)} "
                        f"({', '.join(t.name for t in spec.outputs)})", field="outputs")
    for i, (t, o) in enumerate(zip(spec.outputs, outs)):
        if _dtype_name(o.dtype) != t.dtype:
            raise SpecError(f"{spec.path}: field 'outputs[{i}].dtype': output {t.name!r} is declared {t.dtype}, "
                            f"the model returns {_dtype_name(o.dtype)}", field=f"outputs[{i}].dtype")
        if not _shape_matches(t.shape, tuple(o.shape[1:])):
            raise SpecError(f"{spec.path}: field 'outputs[{i}].shape': output {t.name!r} is declared per-sample "
                            f"{list(t.shape)}, the model returns {list(o.shape[1:])}", field=f"outputs[{i}].shape")
    _check_dynamic_axes(model, spec, {n: feed[n][:2] for n in names})


def _resized(x: np.ndarray, axis: int) -> np.ndarray:
    """``x`` one longer along ``axis`` (its first slice repeated: real values, never made up)."""
    return np.concatenate([x, np.take(x, [0], axis=axis)], axis=axis)


def _longer_fails(model: torch.nn.Module, names: list[str], feed: dict[str, np.ndarray], longer: list[str],
                  axis: int) -> Exception | None:
    """What the model raises with the inputs ``longer`` one longer along ``axis`` (None: it runs)."""
    trial = dict(feed) | {n: _resized(feed[n], axis) for n in longer}
    try:
        with torch.no_grad():
            model(*(torch.from_numpy(np.ascontiguousarray(trial[n])) for n in names))
    except Exception as e:  # noqa: BLE001 - any failure of the user's model at that length
        return e
    return None


def _export_failure(spec: ModelSpec, e: Exception) -> BaseException:
    """torch could not export the model: one line with its own first words (or the interrupt torch
    turned into an error of its own, when a Ctrl-C landed in its lazy imports)."""
    from build_engines.errors import Interrupted, signal_seen
    chain, cur = [], e
    while cur is not None and len(chain) < 20:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    signum = signal_seen()
    if signum is not None or any(isinstance(c, KeyboardInterrupt) for c in chain):
        return Interrupted(signum or 2)
    root = next((c for c in reversed(chain) if str(c).strip()), e)
    lines = [ln.strip() for ln in str(root).splitlines() if ln.strip()]
    first = next((ln for ln in lines if not ln.startswith(("Traceback", "File ", "^", "~"))), type(root).__name__)
    return SpecError(f"{spec.path}: field 'factory': torch.onnx.export cannot export the model "
                     f"({type(root).__name__}: {first[:200]}); run the export alone with "
                     f"`torch.onnx.export(model, args, dynamo=True)` to see the whole error", field="factory")


def _check_dynamic_axes(model: torch.nn.Module, spec: ModelSpec, feed: dict[str, np.ndarray]) -> None:
    """An axis the spec declares -1 must take another length: one forward with it one longer (every
    input's -1 axis at that position together: the export shares them, as a mask shares its ids'
    length). A model that only takes the data's length there (a Linear over it, a view) fails here
    in one line, not in torch.export's constraint solver."""
    names = [t.name for t in spec.inputs]
    axes = sorted({a for t in spec.inputs for a, size in enumerate(t.shape, start=1) if size == -1})
    for axis in axes:
        which = [(i, t) for i, t in enumerate(spec.inputs) if len(t.shape) >= axis and t.shape[axis - 1] == -1]
        e = _longer_fails(model, names, feed, [t.name for _, t in which], axis)
        if e is not None:
            i, t = next(((j, u) for j, u in which if _longer_fails(model, names, feed, [u.name], axis)), which[0])
            length = feed[t.name].shape[axis]
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise SpecError(f"{spec.path}: field 'inputs[{i}].shape': axis {axis - 1} of "
                            f"{t.name!r} is declared dynamic (-1) but the model fails "
                            f"at length {length + 1} ({type(e).__name__}: {first[:160]}); declare its size, {length}",
                            field=f"inputs[{i}].shape") from e


def _forget_recurrent_dispatch() -> None:
    """torch 2.13: once one export in a process has traced a GRU/LSTM/RNN, the op's dispatch cache
    sends the next trace to its Python decomposition, which unrolls the time loop and silently fixes
    the sequence axis at the sample's length (a second build in one process published a graph that
    takes only length 8). Forgetting the cached kernels makes every export trace as the first did."""
    aten = torch.ops.aten
    for packet in (aten.gru, aten.lstm, aten.rnn_tanh, aten.rnn_relu):
        for overload in ("input", "data"):
            cache = getattr(getattr(packet, overload, None), "_dispatch_cache", None)
            if cache is not None:
                cache.clear()


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
    _forget_recurrent_dispatch()
    try:
        with torch.no_grad():
            prog = torch.onnx.export(
                model, args, dynamo=True, input_names=names,
                dynamic_shapes=_dynamic_shapes(spec), opset_version=spec.opset, optimize=True, verbose=False,
            )
    except Exception as e:  # noqa: BLE001 - torch's exporter raises many types; each is the user's model's
        raise _export_failure(spec, e) from e
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
            elem = _ONNX_DTYPES.get(graph[t.name].type.tensor_type.elem_type, "another type")
            if t.dtype != "string" and elem != t.dtype:
                raise SpecError(f"{spec.path}: field '{kind}[{i}].dtype': {t.name!r} is declared {t.dtype}, the "
                                f"exported graph has {elem}", field=f"{kind}[{i}].dtype")
            dims = graph[t.name].type.tensor_type.shape.dim[1:]
            got = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
            if len(got) != len(t.shape) or any(s != -1 and g != -1 and s != g for s, g in zip(t.shape, got)):
                raise SpecError(f"{spec.path}: field '{kind}[{i}].shape' is {list(t.shape)} but the exported graph "
                                f"has {got} for {t.name!r}", field=f"{kind}[{i}].shape")
            fixed = [a for a, (s, g) in enumerate(zip(t.shape, got)) if s == -1 and g != -1]
            if fixed:   # the config would say -1 where the model always gives one size: declare it
                raise SpecError(f"{spec.path}: field '{kind}[{i}].shape' is {list(t.shape)}: axis {fixed[0]} of "
                                f"{t.name!r} is declared dynamic (-1), the exported graph always has {got[fixed[0]]} "
                                f"there; declare shape = {got}", field=f"{kind}[{i}].shape")


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
