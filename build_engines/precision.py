"""Precision variants decided in the ONNX graph.

- ``fp16_onnx_from_onnx``: FP16 compute, FP32 inputs/outputs (ONNX Runtime's float16 converter).
- ``calibrate``: ONNX Runtime's calibrators over real data; ranges cached by model + data + settings.
- ``qdq_onnx_from_onnx``: TensorRT-style INT8 (QDQ, signed int8, zero point 0, per-channel weights,
  FP32 bias), built by ``onnxruntime.quantization.quantize_static`` from the cached ranges.
- ``cpu_int8_onnx_from_onnx``: the CPU twin from the same ranges with uint8 activations, which
  ONNX Runtime fuses into its integer kernels (the TensorRT-style graph is slower than FP32 on CPU).
  Its recipe follows the CPU (build_engines.isa): 8-bit weights where the kernels accumulate
  exactly (VNNI, AMX), 7-bit weights (``reduce_range``) where they would saturate (AVX2 only).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx

from build_engines.errors import CalibrationError

log = logging.getLogger(__name__)

METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class CalibrationSettings:
    method: str = "minmax"
    percentile: float = 99.999
    num_bins: int = 2048
    num_quantized_bins: int = 128
    ops: tuple[str, ...] = ()            # op types to quantize; () = the quantizer's defaults
    exclude_nodes: tuple[str, ...] = ()  # node names kept in FP32

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise CalibrationError(f"calibration method {self.method!r} is unknown; use one of {', '.join(METHODS)}")


def fp16_onnx_from_onnx(src: Path, dst: Path, keep_fp32_nodes: Iterable[str] = ()) -> Path:
    """FP16 weights and compute with FP32 graph inputs/outputs kept (Casts at the edges)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    fp16 = convert_float_to_float16(model, keep_io_types=True, node_block_list=list(keep_fp32_nodes) or None)
    _save(fp16, dst)
    return dst


class _Reader:
    """CalibrationDataReader over a list of feeds (ONNX Runtime may iterate it more than once)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self.feeds, self._it = feeds, iter(feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.feeds)

    def __len__(self) -> int:
        return len(self.feeds)


def collect_calibration(batches: Iterable[dict[str, np.ndarray]] | None, input_names: list[str]) -> list[dict[str, np.ndarray]]:
    """Materialize and check calibration data; refuse to calibrate on nothing (no silent random data)."""
    if batches is None:
        raise CalibrationError("INT8 needs real calibration data: set [data] calibration = 'module:function' in the model spec")
    feeds = [dict(b) for b in batches]
    if not feeds:
        raise CalibrationError("the calibration data loader yielded no batches; INT8 is never calibrated on random data")
    for i, f in enumerate(feeds):
        if sorted(f) != sorted(input_names):
            raise CalibrationError(f"calibration batch {i} has inputs {sorted(f)}, the model wants {sorted(input_names)}")
    return feeds


def _fingerprint(model_path: Path, feeds: list[dict[str, np.ndarray]], settings: CalibrationSettings) -> str:
    h = hashlib.sha256(Path(model_path).read_bytes())
    for f in feeds:
        for k in sorted(f):
            a = np.ascontiguousarray(f[k])
            h.update(k.encode() + str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    h.update(json.dumps(asdict(settings), sort_keys=True).encode())
    return h.hexdigest()[:20]


def calibrate(model_path: Path, feeds: list[dict[str, np.ndarray]], settings: CalibrationSettings, cache_dir: Path) -> tuple[Path, bool]:
    """Compute activation ranges once per (model, data, settings); returns (cache file, cache hit)."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    cache = Path(cache_dir) / f"calib-{settings.method}-{_fingerprint(model_path, feeds, settings)}.json"
    if cache.is_file():
        log.info("calibration cache hit: %s", cache.name)
        return cache, True
    method, extra = {
        "minmax": (CalibrationMethod.MinMax, {"symmetric": True}),
        "entropy": (CalibrationMethod.Entropy, {"symmetric": True, "num_bins": settings.num_bins,
                                                "num_quantized_bins": settings.num_quantized_bins}),
        "percentile": (CalibrationMethod.Percentile, {"symmetric": True, "num_bins": settings.num_bins,
                                                      "percentile": settings.percentile}),
    }[settings.method]
    ragged = len({tuple((k, v.shape) for k, v in sorted(f.items())) for f in feeds}) > 1
    cache.parent.mkdir(parents=True, exist_ok=True)
    for stale in cache.parent.glob("calib.*"):          # left by a build that was killed
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="calib.", dir=cache.parent) as tmp:
        calibrator = create_calibrator(
            Path(model_path), list(settings.ops) or None, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=method, extra_options=extra,
        )
        if ragged and settings.method != "minmax":
            # ONNX Runtime's histogram calibrators stack all batches into one array, which fails for
            # batches of different shapes; fed one batch at a time they merge histograms instead.
            for f in feeds:
                calibrator.collect_data(_Reader([f]))
        else:
            calibrator.collect_data(_Reader(feeds))
        ranges = calibrator.compute_data()
        del calibrator
    save_tensors_data(ranges, cache)
    return cache, False


def _quantize(src: Path, dst: Path, cache: Path, settings: CalibrationSettings, activation: str,
              reduce_range: bool = False) -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[settings.method]
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.stem + ".tmp.onnx")
    quantize_static(
        str(src), str(tmp), calibration_data_reader=None, quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(settings.ops) or None, per_channel=True,
        activation_type=QuantType.QInt8 if activation == "int8" else QuantType.QUInt8,
        weight_type=QuantType.QInt8, nodes_to_exclude=list(settings.exclude_nodes) or None,
        calibrate_method=method, calibration_cache_path=str(cache), reduce_range=reduce_range,
        # Symmetric ranges for both twins: uint8 then gets zero point 128 with the int8 scale (equivalent);
        # asymmetric uint8 from the same symmetric cache lost 5 points of top-1 on digits.
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
    )
    tmp.replace(dst)
    return dst


def qdq_onnx_from_onnx(src: Path, dst: Path, cache: Path, settings: CalibrationSettings) -> Path:
    """TensorRT-style explicit Q/DQ: int8 activations with zero point 0, per-channel symmetric weights."""
    return _quantize(src, dst, cache, settings, activation="int8")


def cpu_int8_onnx_from_onnx(src: Path, dst: Path, cache: Path, settings: CalibrationSettings,
                            recipe: str = "full") -> Path:
    """The CPU serving twin: same ranges, uint8 activations (ONNX Runtime's fused integer kernels);
    recipe "reduce_range" quantizes weights to 7 bits so CPUs without VNNI cannot saturate."""
    return _quantize(src, dst, cache, settings, activation="uint8", reduce_range=recipe == "reduce_range")


def dynamic_int8_onnx_from_onnx(src: Path, dst: Path, settings: CalibrationSettings, recipe: str = "full") -> Path:
    """CPU INT8 with activation ranges computed per batch at run time (no calibration data), per-channel
    int8 weights. Kept for models whose activations static ranges cannot hold (MiniLM: see the README)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.stem + ".tmp.onnx")
    quantize_dynamic(str(src), str(tmp), op_types_to_quantize=list(settings.ops) or None, per_channel=True,
                     weight_type=QuantType.QInt8, reduce_range=recipe == "reduce_range", nodes_to_exclude=list(settings.exclude_nodes) or None)
    tmp.replace(dst)
    return dst


def qdq_summary(path: Path) -> dict[str, object]:
    """What the quantized graph holds: Q/DQ counts, activation zero points, per-channel weight scales."""
    from onnx import numpy_helper

    m = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    q = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
    dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear"]
    act_zp = [inits[n.input[2]] for n in q if len(n.input) > 2 and n.input[2] in inits]
    per_channel = sum(1 for n in dq if n.input[0] in inits and inits[n.input[1]].ndim == 1 and inits[n.input[1]].size > 1)
    return {
        "quantize_linear": len(q), "dequantize_linear": len(dq),
        "activation_zero_points": sorted({int(z.flat[0]) for z in act_zp}),
        "activation_zero_point_dtypes": sorted({str(z.dtype) for z in act_zp}),
        "per_channel_weight_dq": per_channel,
    }


def _save(model: onnx.ModelProto, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.stem + ".tmp.onnx")
    onnx.save_model(model, str(tmp), save_as_external_data=False)
    tmp.replace(dst)



# Ops that carry a model's weights or most of its arithmetic; what a precision changes is told on these.
COMPUTE_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose", "Gather", "GRU", "LSTM", "RNN", "Attention", "Einsum")
INTEGER_OPS = {"MatMulInteger": "MatMul", "ConvInteger": "Conv", "QLinearMatMul": "MatMul", "QLinearConv": "Conv",
               "QGemm": "Gemm", "QAttention": "Attention", "DynamicQuantizeMatMul": "MatMul",
               "MatMulIntegerToFloat": "MatMul", "DynamicQuantizeLSTM": "LSTM"}
RECURRENT_OPS = ("GRU", "LSTM", "RNN")
WEIGHT_INPUTS = {"Gather": (0,), "GRU": (1, 2), "LSTM": (1, 2), "RNN": (1, 2)}   # else input 1 (B of MatMul, W of Conv)


@dataclass(frozen=True)
class Coverage:
    """What one variant's graph runs in reduced precision: compute ops by type (reduced / kept in
    FP32) and the share of weight elements (tensors of rank >= 2: matrices, kernels, tables,
    recurrent weights) stored in 8 or 16 bits."""

    precision: str
    reduced_ops: dict[str, int]
    float_ops: dict[str, int]
    weights_reduced: float

    def text(self) -> str:
        bits = "INT8" if self.precision == "int8" else "FP16" if self.precision == "fp16" else "FP32"
        def ops(d: dict[str, int]) -> str:
            return ", ".join(f"{k} x{v}" for k, v in sorted(d.items())) or "none"
        stays = ops(self.float_ops)
        why = " (recurrent ops have no INT8 Q/DQ here)" if self.precision == "int8" and \
            any(k in RECURRENT_OPS for k in self.float_ops) else ""
        return (f"{bits}: {ops(self.reduced_ops)}; stays FP32: {stays}{why}; "
                f"{self.weights_reduced:.0%} of weights in {bits}")


def coverage_of(path: Path, variant_precision: str) -> Coverage:
    """Read a variant's graph: which compute ops take reduced-precision inputs (a DequantizeLinear
    output, an integer op, or an FP16 tensor) and which stay FP32."""
    from onnx import shape_inference

    m = onnx.load(str(path))
    try:
        m = shape_inference.infer_shapes(m)
    except Exception:            # noqa: BLE001 - inference is a nicety: without it FP16 counts by weights
        pass
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    made_by = {o: n for n in g.node for o in n.output}
    elem = {v.name: v.type.tensor_type.elem_type for v in (*g.value_info, *g.input, *g.output)}
    elem |= {name: i.data_type for name, i in inits.items()}
    for n in g.node:                              # a DequantizeLinear's output is float: type it so
        if n.op_type == "DequantizeLinear":
            elem.setdefault(n.output[0], onnx.TensorProto.FLOAT)
    reduced: dict[str, int] = {}
    kept: dict[str, int] = {}

    eight_bit = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)

    def low_precision(x: str) -> bool:   # dequantized, FP16, or an 8-bit table read as is (dynamic INT8's Gather)
        return ((x in made_by and made_by[x].op_type == "DequantizeLinear") or elem.get(x) == onnx.TensorProto.FLOAT16
                or x in inits and inits[x].data_type in eight_bit)

    for n in g.node:
        op = INTEGER_OPS.get(n.op_type, n.op_type)
        if op not in COMPUTE_OPS:
            continue
        weights = [n.input[i] for i in WEIGHT_INPUTS.get(op, (1,)) if i < len(n.input) and n.input[i]]
        if op == "Gather" and not (weights and (weights[0] in inits or weights[0] in made_by and
                                                made_by[weights[0]].op_type in ("DequantizeLinear", "Cast"))
                                   and elem.get(weights[0]) in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                                                                *eight_bit)):
            continue                              # an index into activations or shapes, not a table lookup
        is_reduced = n.op_type in INTEGER_OPS or bool(weights) and all(low_precision(x) for x in weights)
        bucket = reduced if is_reduced else kept
        bucket[op] = bucket.get(op, 0) + 1
    low = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.FLOAT16)
    sizes = [(int(np.prod(i.dims)), i.data_type in low) for i in g.initializer if len(i.dims) >= 2
             and i.data_type in (*low, onnx.TensorProto.FLOAT)]
    total = sum(s for s, _ in sizes)
    return Coverage(variant_precision, reduced, kept, (sum(s for s, r in sizes if r) / total) if total else 0.0)
