"""Model spec: a small TOML file that names a model factory, its tensors, data and serving defaults.

Example (build_engines/examples/specs/digits.toml)::

    name = "digits"
    factory = "build_engines.examples.digits:trained_model"
    [[inputs]]
    name = "image"
    dtype = "float32"
    shape = [1, 8, 8]          # per sample; -1 marks a dynamic axis
"""

from __future__ import annotations

import importlib
import inspect
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from build_engines.errors import SpecError

DTYPES = {"float32", "float16", "int64", "int32", "int8", "uint8", "bool", "string"}
METRICS = {"top1", "embedding"}
DATA_KINDS = ("real", "synthetic", "random")
SPEC_DIR = Path(__file__).parent / "examples" / "specs"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]  # per sample, without the batch axis; -1 = dynamic

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(object) if self.dtype == "string" else np.dtype(self.dtype)


@dataclass(frozen=True)
class ServingConfig:
    """The spec's [serving] table and what the tuner varies: everything a config.pbtxt carries
    beyond the tensors. One type for both; a bad value fails naming its field."""

    max_batch_size: int = 64
    preferred_batch_sizes: tuple[int, ...] = (8, 16)   # () = let Triton form batches freely
    max_queue_delay_us: int = 500
    dynamic_batching: bool = True
    instances: int = 1
    threads_per_instance: int = 1
    response_cache: bool = False
    warmup: bool = True
    # Queue policy, opt-in: under overload, requests queued longer than queue_timeout_us are rejected
    # (counted, with a clear error) instead of waiting without bound, and the queue holds at most
    # max_queue_size. Off by default: with any queue policy, Triton 2.51's dynamic batcher intermittently
    # leaves lone requests queued for milliseconds or until they expire (upstream server#8870; README).
    queue_timeout_us: int = 0          # 0: no timeout
    max_queue_size: int = 0            # 0: unbounded (with a timeout set: 16 x max_batch_size x instances)

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> SpecError:
            return SpecError(f"field 'serving.{name}' {why}", field=f"serving.{name}")
        if self.max_batch_size < 1:
            raise bad("max_batch_size", f"must be >= 1, got {self.max_batch_size}")
        outside = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if outside:
            raise bad("preferred_batch_sizes", f"has {outside} outside 1..max_batch_size ({self.max_batch_size})")
        for name in ("instances", "threads_per_instance"):
            if getattr(self, name) < 1:
                raise bad(name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("max_queue_delay_us", "queue_timeout_us", "max_queue_size"):
            if getattr(self, name) < 0:
                raise bad(name, f"must be >= 0, got {getattr(self, name)}")

    @classmethod
    def from_spec(cls, spec: "ModelSpec", **overrides) -> "ServingConfig":
        """The spec's [serving] table, with the given fields replaced."""
        return replace(spec.serving, **overrides)

    @property
    def queue_policy(self) -> bool:
        return bool(self.queue_timeout_us or self.max_queue_size)

    @property
    def queue_size(self) -> int:
        return self.max_queue_size or 16 * self.max_batch_size * self.instances

    @property
    def opt_batch(self) -> int:
        """The batch TensorRT's profile optimizes for: the largest preferred batch, else the maximum."""
        return max(self.preferred_batch_sizes) if self.preferred_batch_sizes else self.max_batch_size


@dataclass(frozen=True)
class ModelSpec:
    name: str
    factory: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    calibration: str | None = None  # "module:fn" -> iterable of {input: array}
    evaluation: str | None = None   # "module:fn" -> (inputs dict, labels or None)
    metric: str = "top1"
    budget: float = 0.5             # top1: percentage points; embedding: 1 - mean cosine
    nn_agreement_min: float = 0.95  # embedding metric only
    agreement_min: float = 0.99     # top1: share of samples whose class equals FP32's
    max_relative_error: float | None = None  # mean |output - FP32| / mean |FP32|; None: reported, not gated
    data_kind: str = "real"         # "real", "synthetic" (generated; the model learnt them) or "random" (not gated)
    opset: int = 18
    atol: float = 1e-4
    rtol: float = 1e-3
    dynamic_range: tuple[int, int, int] | None = None  # min/typical/max of every -1 axis; None: from the data
    calibration_method: str = "minmax"
    cpu_int8: str = "static"                 # the CPU serving artifact: "static" twin or "dynamic"
    cpu_recipe: str = "auto"                 # "auto" (by the CPU's ISA), "full" (8-bit weights), "reduce_range"
    quantize_ops: tuple[str, ...] = ()       # empty: the quantizer's defaults
    keep_fp32_nodes: str | None = None       # "module:fn"(onnx.ModelProto) -> node names kept FP32
    serving: ServingConfig = field(default_factory=ServingConfig)
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def resolve(self, attr: str) -> Callable[..., Any]:
        return resolve_callable(getattr(self, attr), f"{attr}", self.path)

    def make_model(self, work_dir: Path):
        fn = self.resolve("factory")
        params = inspect.signature(fn).parameters
        model = fn(work_dir=work_dir) if "work_dir" in params else fn()
        import torch

        if not isinstance(model, torch.nn.Module):
            raise SpecError(f"{self.path}: field 'factory' ({self.factory}) returned {type(model).__name__}, not a torch.nn.Module")
        return model.eval()

    @property
    def gated(self) -> bool:
        """Random data (random weights, random inputs) makes a gate meaningless: speed only."""
        return self.data_kind != "random"

    def dynamic_input(self) -> bool:
        return any(-1 in t.shape for t in self.inputs)

    def evaluation_batches(self) -> list[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        """The held-out data as a list of (inputs, labels) batches. [data] evaluation may return one
        (inputs, labels) pair or a list of them (batches of different shapes, e.g. variable lengths)."""
        raw = self.resolve("evaluation")()
        batches = [raw] if isinstance(raw, tuple) else list(raw) if isinstance(raw, list) else None
        where = f"{self.path}: field 'data.evaluation' ({self.evaluation})"
        if not batches or not all(isinstance(b, tuple) and len(b) == 2 and isinstance(b[0], dict) for b in batches):
            raise SpecError(f"{where} must return (inputs dict, labels or None) or a non-empty list of such pairs")
        names = sorted(t.name for t in self.inputs)
        for i, (feed, labels) in enumerate(batches):
            if sorted(feed) != names:
                raise SpecError(f"{where}: batch {i} has inputs {sorted(feed)}, the spec declares {names}")
            sizes = {len(v) for v in feed.values()} | ({len(labels)} if labels is not None else set())
            if len(sizes) != 1 or 0 in sizes:
                raise SpecError(f"{where}: batch {i} mixes batch sizes {sorted(sizes)} across inputs and labels")
        return batches


def resolve_callable(ref: str | None, field_name: str, path: Path | None = None) -> Callable[..., Any]:
    where = f"{path}: " if path else ""
    if not ref or ":" not in ref:
        raise SpecError(f"{where}field '{field_name}' must be 'package.module:function', got {ref!r}")
    mod_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise SpecError(f"{where}field '{field_name}': cannot import module {mod_name!r} ({e})") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise SpecError(f"{where}field '{field_name}': {mod_name!r} has no callable {attr!r}")
    return fn


def _tensors(raw: Any, key: str, path: Path) -> tuple[TensorSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise SpecError(f"{path}: field '{key}' must be a non-empty list of [[{key}]] tables")
    out = []
    for i, t in enumerate(raw):
        where = f"{path}: field '{key}[{i}]"
        for req in ("name", "dtype", "shape"):
            if req not in t:
                raise SpecError(f"{where}.{req}' is missing")
        if t["dtype"] not in DTYPES:
            raise SpecError(f"{where}.dtype' is {t['dtype']!r}; use one of {sorted(DTYPES)}")
        shape = t["shape"]
        if not isinstance(shape, list) or not all(isinstance(d, int) and (d > 0 or d == -1) for d in shape):
            raise SpecError(f"{where}.shape' must be a list of positive ints or -1 (dynamic), got {shape!r}")
        out.append(TensorSpec(t["name"], t["dtype"], tuple(shape)))
    return tuple(out)


def load_spec(path_or_name: str | Path) -> ModelSpec:
    """Load a spec by file path or by the name of a bundled spec ("digits", "minilm")."""
    path = Path(path_or_name)
    if not path.suffix:
        path = SPEC_DIR / f"{path_or_name}.toml"
    if not path.exists():
        bundled = ", ".join(sorted(p.stem for p in SPEC_DIR.glob("*.toml")))
        raise SpecError(f"model spec {str(path_or_name)!r} not found; give a .toml path or one of: {bundled}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: not valid TOML ({e})") from e
    for req in ("name", "factory", "inputs", "outputs"):
        if req not in raw:
            raise SpecError(f"{path}: field '{req}' is missing")
    acc, exp, srv, data = raw.get("accuracy", {}), raw.get("export", {}), raw.get("serving", {}), raw.get("data", {})
    quant = raw.get("quantization", {})
    metric = acc.get("metric", "top1")
    if metric not in METRICS:
        raise SpecError(f"{path}: field 'accuracy.metric' is {metric!r}; use one of {sorted(METRICS)}")
    budget = float(acc.get("budget", 0.5))
    if budget < 0:
        raise SpecError(f"{path}: field 'accuracy.budget' must be >= 0, got {budget}")
    agreement_min = float(acc.get("agreement_min", 0.99))
    if not 0.0 <= agreement_min <= 1.0:
        raise SpecError(f"{path}: field 'accuracy.agreement_min' must lie in 0..1, got {agreement_min}")
    # Classification: a variant whose logits move 5 % on average is no longer the model that was validated.
    max_rel = acc.get("max_relative_error", 0.05 if metric == "top1" else None)
    if max_rel is not None and (not isinstance(max_rel, (int, float)) or max_rel <= 0):
        raise SpecError(f"{path}: field 'accuracy.max_relative_error' must be a positive number, got {max_rel!r}")
    rng = exp.get("dynamic_range")
    if rng is not None and (not isinstance(rng, list) or len(rng) != 3 or not all(isinstance(d, int) and d > 0 for d in rng)
                            or not rng[0] <= rng[1] <= rng[2]):
        raise SpecError(f"{path}: field 'export.dynamic_range' must be [min, typical, max] positive ints in order, got {rng!r}")
    known = {"max_batch_size", "preferred_batch_sizes", "max_queue_delay_us", "instances", "threads_per_instance",
             "queue_timeout_ms", "max_queue_size"}
    unknown = sorted(set(srv) - known)
    if unknown:
        raise SpecError(f"{path}: field 'serving.{unknown[0]}' is unknown; use {', '.join(sorted(known))}")
    try:
        serving = ServingConfig(
            max_batch_size=int(srv.get("max_batch_size", 64)),
            preferred_batch_sizes=tuple(int(b) for b in srv.get("preferred_batch_sizes", (8, 16))),
            max_queue_delay_us=int(srv.get("max_queue_delay_us", 500)),
            instances=int(srv.get("instances", 1)),
            threads_per_instance=int(srv.get("threads_per_instance", 1)),
            queue_timeout_us=int(float(srv.get("queue_timeout_ms", 0)) * 1000),
            max_queue_size=int(srv.get("max_queue_size", 0)),
        )
    except SpecError as e:
        raise SpecError(f"{path}: {e}", field=e.field) from e
    except (TypeError, ValueError) as e:
        raise SpecError(f"{path}: the [serving] table has a value of the wrong type ({e})") from e
    spec = ModelSpec(
        name=str(raw["name"]),
        factory=str(raw["factory"]),
        inputs=_tensors(raw["inputs"], "inputs", path),
        outputs=_tensors(raw["outputs"], "outputs", path),
        calibration=data.get("calibration"),
        evaluation=data.get("evaluation"),
        metric=metric,
        budget=budget,
        nn_agreement_min=float(acc.get("nn_agreement_min", 0.95)),
        agreement_min=agreement_min,
        max_relative_error=None if max_rel is None else float(max_rel),
        data_kind=str(data.get("kind", "real")),
        opset=int(exp.get("opset", 18)),
        atol=float(exp.get("atol", 1e-4)),
        rtol=float(exp.get("rtol", 1e-3)),
        dynamic_range=tuple(rng) if rng else None,
        calibration_method=quant.get("method", "minmax"),
        cpu_int8=quant.get("cpu_int8", "static"),
        cpu_recipe=quant.get("cpu_recipe", "auto"),
        quantize_ops=tuple(quant.get("ops", ())),
        keep_fp32_nodes=quant.get("keep_fp32_nodes"),
        serving=serving,
        path=path,
        extra=raw.get("extra", {}),
    )
    if spec.data_kind not in DATA_KINDS:
        raise SpecError(f"{path}: field 'data.kind' is {spec.data_kind!r}; use one of {', '.join(DATA_KINDS)}")
    if spec.cpu_recipe not in ("auto", "full", "reduce_range"):
        raise SpecError(f"{path}: field 'quantization.cpu_recipe' is {spec.cpu_recipe!r}; use 'auto', 'full' or 'reduce_range'")
    if spec.cpu_int8 not in ("static", "dynamic"):
        raise SpecError(f"{path}: field 'quantization.cpu_int8' is {spec.cpu_int8!r}; use 'static' or 'dynamic'")
    if not spec.name.replace("_", "").replace("-", "").isalnum():
        raise SpecError(f"{path}: field 'name' must be letters, digits, '_' or '-', got {spec.name!r}")
    # Resolve early so a bad factory fails before any work is done.
    spec.resolve("factory")
    return spec
