"""Triton model repository: configs from the real ``model_config`` protobuf, validation, atomic publish.

A model is emitted for one target per repository:
  cpu            Python backend running the ONNX with ONNX Runtime (what the local Triton can serve)
  onnxruntime    Triton's onnxruntime backend on a GPU node
  tensorrt_plan  a TensorRT engine compiled on a GPU node (see build_engines.tensorrt)
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from build_engines.errors import RepositoryError
from build_engines.spec import ModelSpec, TensorSpec

TARGETS = ("cpu", "onnxruntime", "tensorrt_plan")
MODEL_FILE = {"cpu": "model.onnx", "onnxruntime": "model.onnx", "tensorrt_plan": "model.plan"}
PYTHON_MODEL = Path(__file__).parent / "backends" / "ort_model.py"
ISA_MODULE = Path(__file__).parent / "isa.py"  # beside model.py as cpu_isa.py: INT8 models check their CPU
_DTYPE = {"float32": mc.TYPE_FP32, "float16": mc.TYPE_FP16, "int64": mc.TYPE_INT64, "int32": mc.TYPE_INT32,
          "int8": mc.TYPE_INT8, "uint8": mc.TYPE_UINT8, "bool": mc.TYPE_BOOL, "string": mc.TYPE_STRING}


@dataclass(frozen=True)
class ServingConfig:
    """What the tuner varies; everything a config.pbtxt carries beyond the tensors."""

    max_batch_size: int = 64
    preferred_batch_sizes: tuple[int, ...] = (8, 16)   # () = let Triton form batches freely
    max_queue_delay_us: int = 500
    dynamic_batching: bool = True
    instances: int = 1
    threads_per_instance: int = 1
    response_cache: bool = False
    warmup: bool = True
    num_versions: int = 1

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise RepositoryError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise RepositoryError(f"preferred_batch_sizes {bad} lie outside 1..max_batch_size ({self.max_batch_size})")
        if self.instances < 1 or self.threads_per_instance < 1 or self.max_queue_delay_us < 0:
            raise RepositoryError("instances and threads_per_instance must be >= 1, max_queue_delay_us >= 0")

    @classmethod
    def from_spec(cls, spec: ModelSpec, **overrides) -> "ServingConfig":
        s = spec.serving
        base = cls(max_batch_size=s.max_batch_size, preferred_batch_sizes=tuple(s.preferred_batch_sizes),
                   max_queue_delay_us=s.max_queue_delay_us, instances=s.instances,
                   threads_per_instance=s.threads_per_instance)
        return replace(base, **overrides)

    @property
    def opt_batch(self) -> int:
        """The batch TensorRT's profile optimizes for: the largest preferred batch, else the maximum."""
        return max(self.preferred_batch_sizes) if self.preferred_batch_sizes else self.max_batch_size


def _tensor(t: TensorSpec, cls):
    return cls(name=t.name, data_type=_DTYPE[t.dtype], dims=list(t.shape))


def model_config(name: str, spec: ModelSpec, target: str, serving: ServingConfig,
                 parameters: Mapping[str, str] | None = None) -> mc.ModelConfig:
    if target not in TARGETS:
        raise RepositoryError(f"unknown target {target!r}; use one of {', '.join(TARGETS)}")
    cfg = mc.ModelConfig(name=name, max_batch_size=serving.max_batch_size)
    cfg.input.extend(_tensor(t, mc.ModelInput) for t in spec.inputs)
    cfg.output.extend(_tensor(t, mc.ModelOutput) for t in spec.outputs)
    cfg.version_policy.latest.num_versions = serving.num_versions
    if serving.dynamic_batching:
        cfg.dynamic_batching.preferred_batch_size.extend(serving.preferred_batch_sizes)
        cfg.dynamic_batching.max_queue_delay_microseconds = serving.max_queue_delay_us
    group = cfg.instance_group.add(count=serving.instances)
    if target == "cpu":
        cfg.backend = "python"
        group.kind = mc.ModelInstanceGroup.KIND_CPU
        params = {"onnx_file": MODEL_FILE[target], "intra_op_threads": str(serving.threads_per_instance)}
    elif target == "onnxruntime":
        cfg.platform = "onnxruntime_onnx"
        group.kind = mc.ModelInstanceGroup.KIND_GPU
        params = {}
    else:
        cfg.platform = "tensorrt_plan"
        group.kind = mc.ModelInstanceGroup.KIND_GPU
        group.profile.append("0")  # the one profile plan_from_onnx builds: 1..max_batch_size
        params = {}
    if target != "cpu":  # the Python backend reads default_model_filename as its script (model.py)
        cfg.default_model_filename = MODEL_FILE[target]
    for k, v in {**params, **(parameters or {})}.items():
        cfg.parameters[k].string_value = str(v)
    if serving.response_cache:
        cfg.response_cache.enable = True
    if serving.warmup and all(-1 not in t.shape and t.dtype != "string" for t in spec.inputs):
        w = cfg.model_warmup.add(name="zeros", batch_size=1, count=1)
        for t in spec.inputs:
            w.inputs[t.name].CopyFrom(mc.ModelWarmup.Input(data_type=_DTYPE[t.dtype], dims=list(t.shape), zero_data=True))
    return cfg


TOKENIZER_MODEL = Path(__file__).parent / "backends" / "tokenizer_model.py"


def tokenizer_config(name: str, serving: ServingConfig, max_length: int, buckets: Sequence[int]) -> mc.ModelConfig:
    """The text front of an ensemble: TEXT (BYTES) -> input_ids, attention_mask (INT64, padded to a bucket)."""
    cfg = mc.ModelConfig(name=name, backend="python", max_batch_size=serving.max_batch_size)
    cfg.input.add(name="TEXT", data_type=mc.TYPE_STRING, dims=[1])
    cfg.output.add(name="input_ids", data_type=mc.TYPE_INT64, dims=[-1])
    cfg.output.add(name="attention_mask", data_type=mc.TYPE_INT64, dims=[-1])
    cfg.version_policy.latest.num_versions = 1
    cfg.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)
    cfg.parameters["max_length"].string_value = str(max_length)
    cfg.parameters["buckets"].string_value = ",".join(map(str, buckets))
    if serving.dynamic_batching:
        cfg.dynamic_batching.max_queue_delay_microseconds = serving.max_queue_delay_us
    return cfg


def ensemble_config(name: str, tokenizer: str, encoder: str, spec: ModelSpec, max_batch_size: int) -> mc.ModelConfig:
    """TEXT -> tokenizer -> encoder -> the spec's outputs, scheduled by Triton (no client round trips)."""
    cfg = mc.ModelConfig(name=name, platform="ensemble", max_batch_size=max_batch_size)
    cfg.input.add(name="TEXT", data_type=mc.TYPE_STRING, dims=[1])
    cfg.output.extend(_tensor(t, mc.ModelOutput) for t in spec.outputs)
    tok = cfg.ensemble_scheduling.step.add(model_name=tokenizer, model_version=-1)
    tok.input_map["TEXT"] = "TEXT"
    for t in spec.inputs:
        tok.output_map[t.name] = f"_{t.name}"
    enc = cfg.ensemble_scheduling.step.add(model_name=encoder, model_version=-1)
    for t in spec.inputs:
        enc.input_map[t.name] = f"_{t.name}"
    for t in spec.outputs:
        enc.output_map[t.name] = t.name
    return cfg


def config_text(cfg: mc.ModelConfig) -> str:
    return text_format.MessageToString(cfg)


def parse_config(text: str, where: str = "config.pbtxt") -> mc.ModelConfig:
    try:
        return text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as e:
        raise RepositoryError(f"{where} does not parse as a Triton ModelConfig: {e}") from e


def read_config(model_dir: Path) -> mc.ModelConfig:
    path = Path(model_dir) / "config.pbtxt"
    if not path.is_file():
        raise RepositoryError(f"{model_dir}: config.pbtxt is missing")
    return parse_config(path.read_text(), str(path))


def serving_from_config(cfg: mc.ModelConfig) -> ServingConfig:
    """Round-trip: the ServingConfig a generated config carries."""
    db = cfg.HasField("dynamic_batching")
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    return ServingConfig(
        max_batch_size=cfg.max_batch_size,
        preferred_batch_sizes=tuple(cfg.dynamic_batching.preferred_batch_size) if db else (),
        max_queue_delay_us=cfg.dynamic_batching.max_queue_delay_microseconds if db else 0,
        dynamic_batching=db,
        instances=sum(g.count for g in cfg.instance_group) or 1,
        threads_per_instance=int(params.get("intra_op_threads", 1)),
        response_cache=cfg.response_cache.enable,
        warmup=len(cfg.model_warmup) > 0,
        num_versions=cfg.version_policy.latest.num_versions or 1,
    )


def validate_model_dir(model_dir: Path) -> mc.ModelConfig:
    """Refuse a model folder Triton would choke on (a Python stub that cannot start hangs the load)."""
    model_dir = Path(model_dir)
    cfg = read_config(model_dir)
    if cfg.name and cfg.name != model_dir.name:
        raise RepositoryError(f"{model_dir}/config.pbtxt names the model {cfg.name!r}, the folder is {model_dir.name!r}")
    versions = sorted(p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    if cfg.platform == "ensemble":
        if not cfg.ensemble_scheduling.step:
            raise RepositoryError(f"{model_dir}: ensemble has no steps")
        if not versions:
            raise RepositoryError(f"{model_dir}: an ensemble still needs an (empty) version folder, e.g. {model_dir}/1/")
        return cfg
    if not versions:
        raise RepositoryError(f"{model_dir}: no version folder (e.g. {model_dir}/1/)")
    for v in versions:
        if cfg.backend == "python" and not (v / "model.py").is_file():
            raise RepositoryError(f"{v}: model.py is missing; the Python backend would hang loading this model")
        want = cfg.default_model_filename or ("model.py" if cfg.backend == "python" else "")
        if want and not (v / want).is_file():
            raise RepositoryError(f"{v}: {want} is missing (named by default_model_filename)")
        onnx_file = cfg.parameters["onnx_file"].string_value if "onnx_file" in cfg.parameters else ""
        if onnx_file and not (v / onnx_file).is_file():
            raise RepositoryError(f"{v}: {onnx_file} is missing (named by parameter onnx_file)")
    return cfg


def write_model_dir(dst: Path, cfg: mc.ModelConfig, files: Mapping[str, Path], version: int = 1,
                    python_model: Path | None = None) -> Path:
    """Lay out one model folder: config.pbtxt and version/<files>; hard-links large files when possible."""
    vdir = Path(dst) / str(version)
    vdir.mkdir(parents=True, exist_ok=True)
    (Path(dst) / "config.pbtxt").write_text(config_text(cfg))
    for name, src in files.items():
        _link_or_copy(Path(src), vdir / name)
    if cfg.backend == "python":
        shutil.copyfile(python_model or PYTHON_MODEL, vdir / "model.py")
        if python_model is None:
            shutil.copyfile(ISA_MODULE, vdir / "cpu_isa.py")
    elif cfg.platform == "ensemble":
        (vdir / ".keep").touch()
    return Path(dst)


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


@dataclass
class Staging:
    """Build model folders here, then ``publish`` swaps them into the repository all at once."""

    repository: Path
    root: Path = field(init=False)

    def __post_init__(self) -> None:
        self.repository = Path(self.repository)
        self.repository.parent.mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix=f".{self.repository.name}.staging-", dir=self.repository.parent))

    def model_dir(self, name: str) -> Path:
        return self.root / name

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def publish(self) -> list[str]:
        """Validate every staged model, then rename each into place; on any failure roll all back."""
        staged = sorted(p for p in self.root.iterdir() if p.is_dir())
        try:
            for p in staged:
                validate_model_dir(p)
        except RepositoryError:
            self.discard()
            raise
        self.repository.mkdir(parents=True, exist_ok=True)
        backup = self.repository.parent / f".{self.repository.name}.old-{uuid.uuid4().hex[:8]}"
        backup.mkdir()
        moved: list[tuple[Path, Path | None]] = []
        try:
            for p in staged:
                live = self.repository / p.name
                old = None
                if live.exists():
                    old = backup / p.name
                    live.rename(old)
                moved.append((live, old))
                p.rename(live)
        except OSError as e:
            for live, old in reversed(moved):
                shutil.rmtree(live, ignore_errors=True)
                if old is not None:
                    old.rename(live)
            raise RepositoryError(f"publishing to {self.repository} failed ({e}); the repository was restored") from e
        finally:
            shutil.rmtree(backup, ignore_errors=True)
            self.discard()
        return [p.name for p in staged]

    def __enter__(self) -> "Staging":
        return self

    def __exit__(self, *exc) -> None:
        self.discard()
