"""Triton model repository: configs from the real ``model_config`` protobuf, validation, atomic publish.

A model is emitted for one target per repository:
  cpu            Python backend running the ONNX with ONNX Runtime (what the local Triton can serve)
  onnxruntime    Triton's onnxruntime backend on a GPU node
  tensorrt_plan  a TensorRT engine compiled on a GPU node (see build_engines.tensorrt)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from build_engines.errors import RepositoryError
from build_engines.spec import ModelSpec, ServingConfig, TensorSpec  # noqa: F401 - ServingConfig re-exported

TARGETS = ("cpu", "onnxruntime", "tensorrt_plan")
MODEL_FILE = {"cpu": "model.onnx", "onnxruntime": "model.onnx", "tensorrt_plan": "model.plan"}
PYTHON_MODEL = Path(__file__).parent / "triton_models" / "ort_model.py"
ISA_MODULE = Path(__file__).parent / "isa.py"  # beside model.py as cpu_isa.py: INT8 models check their CPU
_DTYPE = {"float32": mc.TYPE_FP32, "float16": mc.TYPE_FP16, "int64": mc.TYPE_INT64, "int32": mc.TYPE_INT32,
          "int8": mc.TYPE_INT8, "uint8": mc.TYPE_UINT8, "bool": mc.TYPE_BOOL, "string": mc.TYPE_STRING}


def _tensor(t: TensorSpec, cls):
    return cls(name=t.name, data_type=_DTYPE[t.dtype], dims=list(t.shape))


def model_config(name: str, spec: ModelSpec, target: str, serving: ServingConfig,
                 parameters: Mapping[str, str] | None = None) -> mc.ModelConfig:
    if target not in TARGETS:
        raise RepositoryError(f"unknown target {target!r}; use one of {', '.join(TARGETS)}")
    cfg = mc.ModelConfig(name=name)
    cfg.input.extend(_tensor(t, mc.ModelInput) for t in spec.inputs)
    cfg.output.extend(_tensor(t, mc.ModelOutput) for t in spec.outputs)
    if target == "cpu":
        cfg.backend = "python"
        cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU)
        params = {"onnx_file": MODEL_FILE[target]}
    elif target == "onnxruntime":
        cfg.platform = "onnxruntime_onnx"
        cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU)
        params = {}
    else:
        cfg.platform = "tensorrt_plan"
        cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, profile=["0"])  # plan_from_onnx's one profile
        params = {}
    if target != "cpu":  # the Python backend reads default_model_filename as its script (model.py)
        cfg.default_model_filename = MODEL_FILE[target]
    for k, v in {**params, **(parameters or {})}.items():
        cfg.parameters[k].string_value = str(v)
    apply_serving(cfg, serving)
    if serving.warmup and all(-1 not in t.shape and t.dtype != "string" for t in spec.inputs):
        w = cfg.model_warmup.add(name="zeros", batch_size=1, count=1)
        for t in spec.inputs:
            w.inputs[t.name].CopyFrom(mc.ModelWarmup.Input(data_type=_DTYPE[t.dtype], dims=list(t.shape), zero_data=True))
    return cfg


def apply_serving(cfg: mc.ModelConfig, serving: ServingConfig) -> mc.ModelConfig:
    """The one writer of the serving fields (batching, queue policy, instances, threads, cache,
    versions) into a config: the build and the tuner's candidates both go through it."""
    cfg.max_batch_size = serving.max_batch_size
    cfg.version_policy.latest.num_versions = 1      # serve the newest version: publish replaces it whole
    cfg.ClearField("dynamic_batching")
    if serving.dynamic_batching:
        db = cfg.dynamic_batching
        db.preferred_batch_size.extend(serving.preferred_batch_sizes)
        db.max_queue_delay_microseconds = serving.max_queue_delay_us
        if serving.queue_policy:
            db.default_queue_policy.timeout_action = mc.ModelQueuePolicy.REJECT
            db.default_queue_policy.default_timeout_microseconds = serving.queue_timeout_us
            db.default_queue_policy.allow_timeout_override = False
            db.default_queue_policy.max_queue_size = serving.queue_size
    kind = cfg.instance_group[0].kind if cfg.instance_group else mc.ModelInstanceGroup.KIND_CPU
    profiles = list(cfg.instance_group[0].profile) if cfg.instance_group else []
    del cfg.instance_group[:]
    cfg.instance_group.add(count=serving.instances, kind=kind, profile=profiles)
    if cfg.backend == "python":
        cfg.parameters["intra_op_threads"].string_value = str(serving.threads_per_instance)
    cfg.ClearField("response_cache")
    if serving.response_cache:
        cfg.response_cache.enable = True
    return cfg


TOKENIZER_MODEL = Path(__file__).parent / "triton_models" / "tokenizer_model.py"
PADDING_MODULE = Path(__file__).parent / "triton_models" / "padding.py"   # beside it as tck_padding.py


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
        **({"queue_timeout_us": cfg.dynamic_batching.default_queue_policy.default_timeout_microseconds,
            "max_queue_size": cfg.dynamic_batching.default_queue_policy.max_queue_size}
           if db and cfg.dynamic_batching.HasField("default_queue_policy") else {}),
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
        if onnx_file and (Path(onnx_file).name != onnx_file or onnx_file in (".", "..")):
            raise RepositoryError(f"{model_dir}: parameter onnx_file {onnx_file!r} must be a file name in the version folder")
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
        elif python_model == TOKENIZER_MODEL:
            shutil.copyfile(PADDING_MODULE, vdir / "tck_padding.py")
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


JOURNAL = "JOURNAL.json"   # present while a publish swaps folders; gone once it finished


@contextmanager
def _publish_lock(repository: Path):
    """One publish or repair at a time per repository: an flock on a file beside it, released if the
    holder dies, and removed by its holder when done (nothing left behind). A waiter that wakes on a
    file already removed tries again on the new one, so two holders never overlap."""
    import fcntl
    lock = Path(repository).parent / f".{Path(repository).name}.lock"
    while True:
        f = open(lock, "a")
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            same = os.fstat(f.fileno()).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        f.close()
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)      # while still held: a waiter then sees its file is gone
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def repair_interrupted_publish(repository: Path) -> list[str]:
    """Undo what a killed publish left (SIGKILL between two renames), back to the old repository:
    from the backup's journal, every model the publish had replaced gets its old folder back and
    every model it added is removed; a backup without a journal (a finished publish being cleaned)
    is deleted. Returns the models restored or removed."""
    repository = Path(repository)
    if not list(repository.parent.glob(f".{repository.name}.old-*")):
        return []                                    # nothing to repair: no lock needed (read-only mounts)
    with _publish_lock(repository):
        touched = _repair_locked(repository)
    for staging in repository.parent.glob(f".{repository.name}.staging-*"):
        if time.time() - staging.stat().st_mtime > 6 * 3600:      # a build's staging is minutes old
            shutil.rmtree(staging, ignore_errors=True)
    return touched


def _repair_locked(repository: Path) -> list[str]:
    touched: list[str] = []
    for backup in sorted(repository.parent.glob(f".{repository.name}.old-*")):
        journal = backup / JOURNAL
        if journal.is_file():
            try:
                doc = json.loads(journal.read_text())
            except ValueError as e:
                raise RepositoryError(f"{journal} is unreadable ({e}); restore the model folders in {backup} by hand, "
                                      f"then delete it") from e
            for name in doc["staged"]:
                live, old = repository / name, backup / name
                if old.exists():                       # replaced: whatever is live now is the new one
                    if live.exists():
                        shutil.rmtree(live)
                    old.rename(live)
                    touched.append(name)
                elif name not in doc["had_old"] and live.exists():   # added by the killed publish
                    shutil.rmtree(live)
                    touched.append(name)
        shutil.rmtree(backup, ignore_errors=True)
    return touched


def unpublish(repository: Path, names: Sequence[str]) -> list[str]:
    """Remove published models through the same journal as a publish: a kill at any point leaves
    each model either still served or gone, and the next publish or serve finishes the repair.
    Returns the models removed; a name that is not published is an error naming what is."""
    repository = Path(repository)
    have = sorted(p.name for p in repository.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if repository.is_dir() else []
    missing = [n for n in names if n not in have]
    if missing:
        raise RepositoryError(f"{repository} has no model {missing[0]!r}; it has: {', '.join(have) or 'none'}")
    with _publish_lock(repository):
        _repair_locked(repository)
        backup = repository.parent / f".{repository.name}.old-{uuid.uuid4().hex[:8]}"
        backup.mkdir()
        tmp = backup / (JOURNAL + ".tmp")
        tmp.write_text(json.dumps({"staged": list(names), "had_old": list(names), "removed": list(names)}))
        os.replace(tmp, backup / JOURNAL)
        try:
            for n in names:
                (repository / n).rename(backup / n)
        except BaseException:
            _repair_locked(repository)               # all back: every model still served
            raise
        (backup / JOURNAL).unlink()                  # done: from here the backup is only garbage
        shutil.rmtree(backup, ignore_errors=True)
    return list(names)


@dataclass
class Staging:
    """Build model folders here, then ``publish`` swaps them into the repository all at once."""

    repository: Path
    root: Path = field(init=False)
    published: list[str] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.repository = Path(self.repository)
        self.repository.parent.mkdir(parents=True, exist_ok=True)
        repair_interrupted_publish(self.repository)
        self.root = Path(tempfile.mkdtemp(prefix=f".{self.repository.name}.staging-", dir=self.repository.parent))

    def model_dir(self, name: str) -> Path:
        return self.root / name

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def publish(self) -> list[str]:
        """Validate every staged model, then rename each into place. Any interruption (an error,
        Ctrl-C) rolls all back; a SIGKILL leaves the old folders in a backup that the next publish
        or serve restores (``repair_interrupted_publish``): never neither the old nor the new."""
        staged = sorted(p for p in self.root.iterdir() if p.is_dir())
        try:
            for p in staged:
                validate_model_dir(p)
        except RepositoryError:
            self.discard()
            raise
        self.repository.mkdir(parents=True, exist_ok=True)
        with _publish_lock(self.repository):
            _repair_locked(self.repository)              # a publish killed since this staging began
            backup = self.repository.parent / f".{self.repository.name}.old-{uuid.uuid4().hex[:8]}"
            backup.mkdir()
            had_old = [p.name for p in staged if (self.repository / p.name).exists()]
            tmp = backup / (JOURNAL + ".tmp")
            tmp.write_text(json.dumps({"staged": [p.name for p in staged], "had_old": had_old}))
            os.replace(tmp, backup / JOURNAL)            # a journal is whole or absent
            done = False
            try:
                for p in staged:
                    live, old = self.repository / p.name, backup / p.name
                    if live.exists():
                        live.rename(old)
                    p.rename(live)
                (backup / JOURNAL).unlink()              # done: from here the backup is only garbage
                done = True
                self.published = [p.name for p in staged]   # said by an interrupt during the clean-up below
            except BaseException as e:
                _repair_locked(self.repository)          # the journal puts the old repository back
                if isinstance(e, OSError):
                    raise RepositoryError(f"publishing to {self.repository} failed ({e}); the repository was restored") from e
                raise
            finally:
                if done or (backup.exists() and not any(p.is_dir() for p in backup.iterdir())):
                    shutil.rmtree(backup, ignore_errors=True)   # kept only if a restore failed half-way
                self.discard()
        return [p.name for p in staged]

    def __enter__(self) -> "Staging":
        return self

    def __exit__(self, *exc) -> None:
        self.discard()
