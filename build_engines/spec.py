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

import difflib
import importlib
import inspect
import sys
import tomllib
import typing
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from build_engines.errors import SpecError

DTYPES = {"float32", "float16", "int64", "int32", "int8", "uint8", "bool", "string"}
METRICS = {"top1", "embedding"}
DATA_KINDS = ("real", "synthetic", "random")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
SPEC_DIR = Path(__file__).parent / "examples" / "specs"
# ModelSpec attribute -> the spec file's key, for messages
FIELD_OF = {"calibration": "data.calibration", "evaluation": "data.evaluation",
            "keep_fp32_nodes": "quantization.keep_fp32_nodes"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]  # per sample, without the batch axis; -1 = dynamic

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(object) if self.dtype == "string" else np.dtype(self.dtype)


# Why a backlog bound is refused for a model with a variable-length input (the spec and the publish say it)
RAGGED_BACKLOG = ("cannot bound a model with a variable-length input (its batches never fill, and shedding a request "
                  "costs what serving it does); leave it out; bound such a model with a rate-limiting front on Triton "
                  "2.51, or queue_timeout_ms / max_queue_size on Triton >= 2.72 (2.51's queue policy stalls at low load)")


def default_backlog(max_batch_size: int, instances: int) -> int:
    """The CPU model's backlog bound when the spec leaves ``backlog_max`` at -1 (requests pending)."""
    return max(64, 4 * max_batch_size * instances)


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
    # The CPU target's own bound, on by default (the queue policy above cannot be on Triton 2.51): while
    # more than this many requests are pending for the model (Triton's gauge, read only while batches
    # come in full), the served model answers requests at once with an "overloaded" error instead of
    # letting the queue, and the server's memory, grow. Counted in requests (Triton's gauge), not
    # samples. -1: max(64, 4 x max_batch_size x instances); 0: off.
    backlog_max: int = -1

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
        if self.backlog_max < -1:
            raise bad("backlog_max", f"must be -1 (the default bound), 0 (off) or a count, got {self.backlog_max}")

    @classmethod
    def from_spec(cls, spec: "ModelSpec", **overrides) -> "ServingConfig":
        """The spec's [serving] table, with the given fields replaced."""
        return replace(spec.serving, **overrides)

    @property
    def queue_policy(self) -> bool:
        return bool(self.queue_timeout_us or self.max_queue_size)

    @property
    def backlog_bound(self) -> int:
        """Requests pending beyond which the CPU model sheds (0: never)."""
        return default_backlog(self.max_batch_size, self.instances) if self.backlog_max == -1 else self.backlog_max

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
    cache: "CacheTable" = field(default_factory=lambda: CacheTable())
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    python_path: tuple[str, ...] = ()       # folders this spec put on sys.path (its own, [python] path)

    def resolve(self, attr: str) -> Callable[..., Any]:
        return resolve_callable(getattr(self, attr), FIELD_OF.get(attr, attr), self.path)

    def make_model(self, work_dir: Path):
        fn = self.resolve("factory")
        params = inspect.signature(fn).parameters
        required = [n for n, p in params.items() if p.default is p.empty and n != "work_dir"
                    and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if required:
            raise SpecError(f"{self.path}: field 'factory' ({self.factory}) takes {', '.join(required)}; a factory takes "
                            f"no argument, or work_dir (a folder for downloads and caches)", field="factory")
        call = (lambda: fn(work_dir=work_dir)) if "work_dir" in params else fn
        model = call_user(call, "factory", self.factory, self.path)
        import torch

        if not isinstance(model, torch.nn.Module):
            raise SpecError(f"{self.path}: field 'factory' ({self.factory}) returned {type(model).__name__}, not a torch.nn.Module")
        return model.eval()

    def calibration_batches(self) -> list | None:
        """The calibration data, materialized (None where the spec names none); the user's generator
        failing part-way is said in one line naming the field."""
        if not self.calibration:
            return None
        fn = self.resolve("calibration")
        return call_user(lambda: list(fn() or ()), "data.calibration", self.calibration, self.path)

    @property
    def gated(self) -> bool:
        """Random data (random weights, random inputs) makes a gate meaningless: speed only."""
        return self.data_kind != "random"

    def dynamic_input(self) -> bool:
        return any(-1 in t.shape for t in self.inputs)

    def evaluation_batches(self) -> list[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        """The held-out data as a list of (inputs, labels) batches. [data] evaluation may return one
        (inputs, labels) pair or a list of them (batches of different shapes, e.g. variable lengths)."""
        if not self.evaluation:
            raise SpecError(f"{self.path}: field 'data.evaluation' is missing: set [data] evaluation = "
                            f"\"package.module:function\" returning (inputs dict, labels or None)", field="data.evaluation")
        fn = self.resolve("evaluation")
        raw = call_user(fn, "data.evaluation", self.evaluation, self.path)
        batches = [raw] if isinstance(raw, tuple) else list(raw) if isinstance(raw, list) else None
        where = f"{self.path}: field 'data.evaluation' ({self.evaluation})"
        if not batches or not all(isinstance(b, tuple) and len(b) == 2 and isinstance(b[0], dict) for b in batches):
            raise SpecError(f"{where} must return (inputs dict, labels or None) or a non-empty list of such pairs")
        names = sorted(t.name for t in self.inputs)
        for i, (feed, labels) in enumerate(batches):
            if sorted(feed) != names:
                raise SpecError(f"{where}: batch {i} has inputs {sorted(feed)}, the spec declares {names}")
            arrays = [*feed.items(), *([("labels", labels)] if labels is not None else [])]
            bad = next(((k, v) for k, v in arrays if not isinstance(v, np.ndarray)), None)
            if bad:
                raise SpecError(f"{where}: batch {i}'s {bad[0]!r} is {type(bad[1]).__name__}, not a numpy array; "
                                f"return np.asarray(...) with the spec's dtype")
            sizes = {len(v) for v in feed.values()} | ({len(labels)} if labels is not None else set())
            if len(sizes) != 1 or 0 in sizes:
                raise SpecError(f"{where}: batch {i} mixes batch sizes {sorted(sizes)} across inputs and labels")
        return batches


def call_user(fn: Callable[[], Any], field_name: str, ref: str | None, path: Path | None) -> Any:
    """Run a function of the user's (factory, data): whatever it raises is said in one line naming the
    spec's field, never a traceback. Ctrl-C and our own SpecError pass through."""
    try:
        return fn()
    except SpecError:
        raise
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        where = f"{path}: " if path else ""
        raise SpecError(f"{where}field '{field_name}' ({ref}) raised {type(e).__name__}: {first}", field=field_name) from e


def resolve_callable(ref: str | None, field_name: str, path: Path | None = None) -> Callable[..., Any]:
    where = f"{path}: " if path else ""
    if not ref or ":" not in ref:
        raise SpecError(f"{where}field '{field_name}' must be 'package.module:function', got {ref!r}")
    mod_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        hint = (f"; the spec's folder {path.parent} is on the import path: put the package there, or name its "
                f"folder in [python] path = [\"...\"] (relative to the spec)") if path else ""
        raise SpecError(f"{where}field '{field_name}': cannot import module {mod_name!r} ({e}){hint}") from e
    except Exception as e:   # the user's module itself failed while importing: say where, in one line
        first = str(e).splitlines()[0] if str(e) else ""
        raise SpecError(f"{where}field '{field_name}': importing {mod_name!r} raised {type(e).__name__}: {first}") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        origin = getattr(module, "__file__", None) or "a namespace package"
        raise SpecError(f"{where}field '{field_name}': {mod_name!r} has no callable {attr!r} (that module is {origin}; "
                        f"if yours has the same name as an installed one, rename your package)")
    return fn


# ---- the spec file's tables, typed: what load_spec accepts, key by key ----

@dataclass(frozen=True)
class TensorTable:
    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class DataTable:
    calibration: str | None = None
    evaluation: str | None = None
    kind: str = "real"


@dataclass(frozen=True)
class ExportTable:
    opset: int = 18
    atol: float = 1e-4
    rtol: float = 1e-3
    dynamic_range: tuple[int, ...] | None = None


@dataclass(frozen=True)
class AccuracyTable:
    metric: str = "top1"
    budget: float = 0.5
    nn_agreement_min: float = 0.95
    agreement_min: float = 0.99
    max_relative_error: float | None = None


@dataclass(frozen=True)
class QuantizationTable:
    method: str = "minmax"
    cpu_int8: str = "static"
    cpu_recipe: str = "auto"
    ops: tuple[str, ...] = ()
    keep_fp32_nodes: str | None = None


@dataclass(frozen=True)
class ServingTable:
    max_batch_size: int = 64
    preferred_batch_sizes: tuple[int, ...] = (8, 16)
    max_queue_delay_us: int = 500
    instances: int = 1
    threads_per_instance: int = 1
    queue_timeout_ms: float = 0.0
    max_queue_size: int = 0
    backlog_max: int = -1


@dataclass(frozen=True)
class CacheTable:
    """[cache]: the shared response cache in front of the served model (clients/redis_cache.py)."""
    ttl_s: float = 3600.0                  # how long an answer may be served from the cache
    ignore_inputs: tuple[str, ...] = ()    # inputs left out of the key (timestamps, session ids, trace ids)


@dataclass(frozen=True)
class PythonTable:
    path: tuple[str, ...] = ()     # folders put on the import path, relative to the spec's folder


@dataclass(frozen=True)
class ExtraTable:
    text_ensemble: bool = False
    tokenizer_json: str | None = None
    max_length: int = 128
    buckets: tuple[int, ...] = (16, 32, 64, 128)
    sla_ms: float | None = None


@dataclass(frozen=True)
class SpecFile:
    name: str
    factory: str
    inputs: tuple[dict, ...]
    outputs: tuple[dict, ...]
    data: dict = field(default_factory=dict)
    export: dict = field(default_factory=dict)
    accuracy: dict = field(default_factory=dict)
    quantization: dict = field(default_factory=dict)
    serving: dict = field(default_factory=dict)
    python: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)


def _type_name(hint: Any) -> str:
    args = typing.get_args(hint)
    if type(None) in args:
        return " or ".join(_type_name(a) for a in args if a is not type(None))
    if typing.get_origin(hint) is tuple:
        return {int: "a list of integers", str: "a list of strings", dict: "a list of tables"}[args[0]]
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a table"}[hint]


def _shown(value: Any) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)
    shown = str(value).lower() if isinstance(value, bool) else repr(value)    # as TOML writes it
    return f"{shown} ({kind})"


def _coerce(value: Any, hint: Any) -> Any:
    """The TOML value as the annotation's type, else TypeError (a boolean is never a number)."""
    args = typing.get_args(hint)
    if type(None) in args:
        return _coerce(value, next(a for a in args if a is not type(None)))
    if typing.get_origin(hint) is tuple and isinstance(value, list):
        return tuple(_coerce(v, args[0]) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (bool, int, float, str, dict) and type(value) is hint:
        return value
    raise TypeError(f"{value!r} is not {_type_name(hint)}")


def _table(cls: type, raw: Any, where: str, path: Path) -> Any:
    """One TOML table as the dataclass ``cls``: an unknown key is refused with the closest valid one,
    every value is checked against its field's type; each in one line naming the file, table and key."""
    label = "the top level" if not where else f"table {where}" if "[" in where else f"[{where}]"
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: field '{where}' must be a table, got {_shown(raw)}", field=where)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    for key in raw:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'? " if close else ""
            dotted = f"{where}.{key}" if where else key
            raise SpecError(f"{path}: field '{dotted}' is unknown in {label}; {hint}valid keys: {', '.join(names)}",
                            field=dotted)
    missing = [f.name for f in fields(cls) if f.name not in raw and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        dotted = f"{where}.{missing[0]}" if where else missing[0]
        raise SpecError(f"{path}: field '{dotted}' is missing", field=dotted)
    values = {}
    for name in (n for n in names if n in raw):
        try:
            values[name] = _coerce(raw[name], hints[name])
        except TypeError as e:
            dotted = f"{where}.{name}" if where else name
            raise SpecError(f"{path}: field '{dotted}' must be {_type_name(hints[name])}, got {_shown(raw[name])}",
                            field=dotted) from e
    return cls(**values)


def table_of(cls: type, raw: Any, where: str, path: Path) -> Any:
    """A TOML table of another file (a fleet spec) checked as the spec's own tables are (``_table``)."""
    return _table(cls, raw, where, path)


def one_of(path: Path, name: str, value: str, allowed) -> None:
    """A value that must be one of ``allowed``, refused with the closest (``_one_of``)."""
    _one_of(path, name, value, allowed)


def _one_of(path: Path, name: str, value: str, allowed) -> None:
    if value not in allowed:
        close = difflib.get_close_matches(str(value), list(allowed), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SpecError(f"{path}: field '{name}' is {value!r}{hint}; use one of {', '.join(sorted(allowed))}", field=name)


def _tensors(raw: tuple, key: str, path: Path) -> tuple[TensorSpec, ...]:
    if not raw:
        raise SpecError(f"{path}: field '{key}' must be a non-empty list of [[{key}]] tables", field=key)
    out = []
    for i, t in enumerate(raw):
        where = f"{key}[{i}]"
        tab = _table(TensorTable, t, where, path)
        _one_of(path, f"{where}.dtype", tab.dtype, DTYPES)
        if not all(d > 0 or d == -1 for d in tab.shape):
            raise SpecError(f"{path}: field '{where}.shape' must be a list of positive ints or -1 (dynamic), "
                            f"got {list(tab.shape)!r}", field=f"{where}.shape")
        out.append(TensorSpec(tab.name, tab.dtype, tab.shape))
    names = [t.name for t in out]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise SpecError(f"{path}: field '{key}' names {dup!r} twice", field=key)
    return tuple(out)


def _quantizable(path: Path, ops: tuple[str, ...]) -> None:
    """[quantization] ops must be op types ONNX Runtime's quantizer quantizes (a typo quantizes nothing)."""
    if not ops:
        return
    from onnxruntime.quantization import registry
    known = set(registry.QDQRegistry) | set(registry.IntegerOpsRegistry) | set(registry.QLinearOpsRegistry)
    for i, op in enumerate(ops):
        if op not in known:
            close = difflib.get_close_matches(op, sorted(known), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SpecError(f"{path}: field 'quantization.ops[{i}]' is {op!r}{hint}: not an op type ONNX Runtime "
                            f"quantizes; use some of {', '.join(sorted(known))}", field=f"quantization.ops[{i}]")


def spec_path(path_or_name: str | Path, build_dir: Path | None = None) -> Path:
    """A spec file from a path, a bundled spec's name ("digits"), or the name of a model built into
    ``build_dir`` (its build report records the spec it was built from)."""
    path = Path(path_or_name)
    if path.suffix:
        if not path.is_file():
            raise SpecError(f"model spec {str(path_or_name)!r} not found (no such file)")
        return path.resolve()
    bundled = SPEC_DIR / f"{path_or_name}.toml"
    if bundled.is_file():
        return bundled
    folder = Path(build_dir) / str(path_or_name) if build_dir else None
    # the last build that was ok, or else the last one that published (a failed rebuild since keeps it)
    for ref in ((folder / "build_report.json", folder / "published_from.json") if folder else ()):
        if not ref.is_file():
            continue
        import json
        try:
            built = json.loads(ref.read_text())
            ok = built.get("ok", True) is True
            recorded = Path(built.get("spec") or "") if ok else Path()    # a failed build's spec is not trusted
        except (ValueError, AttributeError):
            recorded = Path()
        if recorded.suffix and recorded.is_file():
            return recorded
    names = ", ".join(sorted(p.stem for p in SPEC_DIR.glob("*.toml")))
    built = f", or the name of a model built into {build_dir}" if build_dir else ""
    raise SpecError(f"model spec {str(path_or_name)!r} not found; give a .toml path, one of: {names}{built}")


def import_paths(path: Path, python: PythonTable, install: bool = True) -> list[str]:
    """The folders a spec's factory and data functions import from: the spec's own folder, then its
    [python] path entries (relative to that folder); with ``install``, each is put on sys.path once."""
    base = path.parent
    folders = [base, *[(base / p).resolve() for p in python.path]]
    for i, folder in enumerate(folders[1:]):
        if not folder.is_dir():
            raise SpecError(f"{path}: field 'python.path[{i}]' is {python.path[i]!r}: {folder} is not a folder",
                            field=f"python.path[{i}]")
    for folder in folders if install else ():       # appended: a user's folder never shadows this project's packages
        if str(folder) not in sys.path:
            sys.path.append(str(folder))
    return [str(f) for f in folders]


def load_spec(path_or_name: str | Path, build_dir: Path | None = None, resolve: bool = True) -> ModelSpec:
    """Load a spec by file path, by the name of a bundled spec ("digits", "minilm"), or by the name of a
    model built into ``build_dir``. Every table and value is checked; a bad one raises SpecError naming
    the file and the key. ``resolve=False``: the user's code is neither imported nor put on the import
    path (for commands that only need the spec's name and serving settings)."""
    path = spec_path(path_or_name, build_dir)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: not valid TOML ({e})") from e
    top = _table(SpecFile, raw, "", path)
    data = _table(DataTable, top.data, "data", path)
    exp = _table(ExportTable, top.export, "export", path)
    acc = _table(AccuracyTable, top.accuracy, "accuracy", path)
    quant = _table(QuantizationTable, top.quantization, "quantization", path)
    srv = _table(ServingTable, top.serving, "serving", path)
    python = _table(PythonTable, top.python, "python", path)
    extra = _table(ExtraTable, top.extra, "extra", path)
    cache = _table(CacheTable, top.cache, "cache", path)
    _one_of(path, "accuracy.metric", acc.metric, METRICS)
    _one_of(path, "data.kind", data.kind, DATA_KINDS)
    _one_of(path, "quantization.method", quant.method, CALIBRATION_METHODS)
    _one_of(path, "quantization.cpu_recipe", quant.cpu_recipe, ("auto", "full", "reduce_range"))
    _one_of(path, "quantization.cpu_int8", quant.cpu_int8, ("static", "dynamic"))
    _quantizable(path, quant.ops)
    if acc.budget < 0:
        raise SpecError(f"{path}: field 'accuracy.budget' must be >= 0, got {acc.budget}", field="accuracy.budget")
    for name in ("agreement_min", "nn_agreement_min"):
        if not 0.0 <= getattr(acc, name) <= 1.0:
            raise SpecError(f"{path}: field 'accuracy.{name}' must lie in 0..1, got {getattr(acc, name)}",
                            field=f"accuracy.{name}")
    # Classification: a variant whose logits move 5 % on average is no longer the model that was validated.
    max_rel = acc.max_relative_error if "max_relative_error" in top.accuracy else (0.05 if acc.metric == "top1" else None)
    if max_rel is not None and max_rel <= 0:
        raise SpecError(f"{path}: field 'accuracy.max_relative_error' must be a positive number, got {max_rel!r}",
                        field="accuracy.max_relative_error")
    rng = exp.dynamic_range
    if rng is not None and (len(rng) != 3 or not all(d > 0 for d in rng) or not rng[0] <= rng[1] <= rng[2]):
        raise SpecError(f"{path}: field 'export.dynamic_range' must be [min, typical, max] positive ints in order, "
                        f"got {list(rng)!r}", field="export.dynamic_range")
    for name in ("atol", "rtol"):
        if getattr(exp, name) < 0:
            raise SpecError(f"{path}: field 'export.{name}' must be >= 0, got {getattr(exp, name)}", field=f"export.{name}")
    if not 7 <= exp.opset <= 23:
        raise SpecError(f"{path}: field 'export.opset' must lie in 7..23, got {exp.opset}", field="export.opset")
    try:
        serving = ServingConfig(
            max_batch_size=srv.max_batch_size, preferred_batch_sizes=srv.preferred_batch_sizes,
            max_queue_delay_us=srv.max_queue_delay_us, instances=srv.instances,
            threads_per_instance=srv.threads_per_instance, queue_timeout_us=int(srv.queue_timeout_ms * 1000),
            max_queue_size=srv.max_queue_size, backlog_max=srv.backlog_max)
    except SpecError as e:
        raise SpecError(f"{path}: {e}", field=e.field) from e
    if cache.ttl_s <= 0:
        raise SpecError(f"{path}: field 'cache.ttl_s' must be > 0 seconds, got {cache.ttl_s}", field="cache.ttl_s")
    declared = [t.get("name") for t in top.inputs if isinstance(t, dict)]
    unknown = [n for n in cache.ignore_inputs if n not in declared]
    if unknown:
        raise SpecError(f"{path}: field 'cache.ignore_inputs' names {unknown}, not inputs of this model ({declared})",
                        field="cache.ignore_inputs")
    name = top.name
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise SpecError(f"{path}: field 'name' must be letters, digits, '_' or '-', got {name!r}", field="name")
    spec = ModelSpec(
        name=name,
        factory=top.factory,
        inputs=_tensors(top.inputs, "inputs", path),
        outputs=_tensors(top.outputs, "outputs", path),
        calibration=data.calibration,
        evaluation=data.evaluation,
        metric=acc.metric,
        budget=acc.budget,
        nn_agreement_min=acc.nn_agreement_min,
        agreement_min=acc.agreement_min,
        max_relative_error=max_rel,
        data_kind=data.kind,
        opset=exp.opset,
        atol=exp.atol,
        rtol=exp.rtol,
        dynamic_range=tuple(rng) if rng else None,
        calibration_method=quant.method,
        cpu_int8=quant.cpu_int8,
        cpu_recipe=quant.cpu_recipe,
        quantize_ops=quant.ops,
        keep_fp32_nodes=quant.keep_fp32_nodes,
        serving=serving,
        cache=cache,
        path=path,
        extra={k: getattr(extra, k) for k in top.extra},
        python_path=tuple(import_paths(path, python, install=resolve)),
    )
    if srv.backlog_max > 0 and spec.dynamic_input():
        raise SpecError(f"{path}: field 'serving.backlog_max' {RAGGED_BACKLOG}", field="serving.backlog_max")
    if not resolve:
        return spec
    # Resolve early so a bad factory or data function fails before any work is done.
    spec.resolve("factory")
    for attr in FIELD_OF:
        if getattr(spec, attr):
            spec.resolve(attr)
    return spec
