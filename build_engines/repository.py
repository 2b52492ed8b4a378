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
from build_engines.spec import RAGGED_BACKLOG, ModelSpec, ServingConfig, TensorSpec, default_backlog  # noqa: F401 - ServingConfig re-exported

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
        if "onnx_file" in cfg.parameters:          # the CPU target's model.py sheds past this backlog
            cfg.parameters["backlog_max"].string_value = str(_backlog_published(serving, cfg))
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


# Triton's queue policy (default_queue_policy) stalls lone requests at low load before this release
# (upstream server#8870: 3-4x at concurrency 1 measured on 2.51 with max_queue_size alone); fixed in
# Triton 2.72.0, the NGC container 26.08. Our configs keep it opt-in; these say where it is safe.
QUEUE_POLICY_FIXED_IN = (2, 72)
QUEUE_POLICY_FIXED_NGC = (26, 8)


def queue_policy_works(triton_version: str = "", ngc_image: str = "") -> bool:
    """Whether a queue policy is safe on this Triton (its version "2.51.0") or NGC image
    ("nvcr.io/nvidia/tritonserver:26.08-py3"); unknown: False."""
    import re
    if triton_version:
        m = re.match(r"(\d+)\.(\d+)", triton_version)
        return bool(m) and (int(m.group(1)), int(m.group(2))) >= QUEUE_POLICY_FIXED_IN
    m = re.search(r":(\d+)\.(\d+)", ngc_image)
    return bool(m) and (int(m.group(1)), int(m.group(2))) >= QUEUE_POLICY_FIXED_NGC


def queue_policy_warning(model_dir: Path, triton_version: str = "", ngc_image: str = "") -> str:
    """One line when a published model has a queue policy on a Triton where it stalls; '' if not."""
    try:
        cfg = read_config(model_dir)
    except (OSError, RepositoryError):
        return ""
    if not cfg.dynamic_batching.HasField("default_queue_policy") or queue_policy_works(triton_version, ngc_image):
        return ""
    where = f"Triton {triton_version}" if triton_version else (ngc_image or "this Triton")
    return (f"{model_dir.name} has a queue policy, which on {where} stalls lone requests at low load (upstream "
            f"server#8870, 3-4x at concurrency 1; fixed in Triton 2.72 / NGC 26.08): drop [serving] "
            f"queue_timeout_ms / max_queue_size (the CPU target's backlog_max bounds overload without it) or "
            f"serve it on a fixed Triton")


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


def ragged(cfg: mc.ModelConfig) -> bool:
    """A variable-length input: requests of different shapes never share a batch."""
    return any(d < 0 for t in cfg.input for d in t.dims)


def _backlog_published(serving: ServingConfig, cfg: mc.ModelConfig) -> int:
    """The bound model.py enforces; 0 (off) by default for a model with a variable-length input, where
    batches never fill and shedding one request costs about what serving it does (ort_model.Backlog)."""
    if not ragged(cfg):
        return serving.backlog_bound
    if serving.backlog_max > 0:
        raise RepositoryError(f"{cfg.name}: [serving] backlog_max = {serving.backlog_max} {RAGGED_BACKLOG}")
    return 0


def _backlog_field(bound: int, cfg: mc.ModelConfig) -> int:
    """-1 where the config's bound is the default one for its batch size and instances (or, for a model with
    a variable-length input, the default 0)."""
    if ragged(cfg) and bound == 0:
        return -1
    instances = sum(g.count for g in cfg.instance_group) or 1
    return -1 if bound == default_backlog(cfg.max_batch_size, instances) else bound


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
        **({"backlog_max": _backlog_field(int(params["backlog_max"]), cfg)} if "backlog_max" in params else {}),
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


def _link_or_copy(src: str | Path, dst: str | Path) -> None:
    """A hard link (no bytes copied), a copy where linking fails (another filesystem); also
    shutil.copytree's copy function."""
    if os.path.lexists(dst):
        os.unlink(dst)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


JOURNAL = "JOURNAL.json"   # the pre-generation scheme's backup journal (repaired if an old publish left one)

# A repository is a symlink to one generation folder beside it (``.NAME.gen-<id>``), as Kubernetes'
# AtomicWriter does: a publish builds the next generation whole (unchanged models hard-linked from the
# live one, the new ones moved in), then swaps the link with one rename(2). Whatever reads the
# repository path (our serve, a Triton started by hand, a pod mounting the folder's parent) sees the
# old set or the new set, never a mix, with kill -9 at any point and no tool of ours run afterwards.
GEN_MARK, LINK_MARK, ADOPTED = ".gen-", ".link-", "adopted-"


def _sibling(repository: Path, mark: str, tag: str = "") -> Path:
    return repository.parent / f".{repository.name}{mark}{tag}{uuid.uuid4().hex[:8]}"


def live_generation(repository: Path) -> Path | None:
    """The generation folder the repository link points to: one of ours, beside it (None: not a link,
    a dangling one, or a link of the user's to a folder elsewhere, which is never ours to delete)."""
    repository = Path(repository)
    if not repository.is_symlink():
        return None
    target = repository.parent / os.readlink(repository)
    ours = target.parent.resolve() == repository.parent.resolve() and target.name.startswith(
        f".{repository.name}{GEN_MARK}")
    return target if ours and target.is_dir() else None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _point(repository: Path, generation: Path) -> None:
    """Swap the repository link to ``generation`` in one rename (relative: the folder can move)."""
    tmp = _sibling(repository, LINK_MARK)
    os.symlink(generation.name, tmp)
    os.replace(tmp, repository)
    _fsync_dir(repository.parent)


def _adopt(repository: Path) -> Path:
    """The live generation, making one first: a plain folder (an older layout, or a user's) is moved
    behind a link once; a missing repository starts empty."""
    live = live_generation(repository)
    if live is not None:
        return live
    if repository.is_symlink() and not repository.is_dir():
        raise RepositoryError(f"{repository} is a link to {os.readlink(repository)}, which is missing; point it at a "
                              f"repository folder or remove it")
    if repository.is_dir() and os.path.ismount(repository):
        raise RepositoryError(f"{repository} is a mount point: a publish swaps a link in its folder; publish into a "
                              f"folder inside it (--repository {repository / 'models'}) and serve that")
    if not repository.is_dir():
        gen = _sibling(repository, GEN_MARK, ADOPTED)
        gen.mkdir()
        _point(repository, gen)
        return gen
    gen = _adopted_copy(repository)
    if repository.is_symlink():                      # the user's own link to a folder elsewhere: copied, left as is
        _point(repository, gen)                      # replaces only the link; the folder it named is untouched
        return gen
    tmp = _sibling(repository, LINK_MARK)
    os.symlink(gen.name, tmp)
    if _exchange(tmp, repository):  # one atomic swap of the folder and the link: old set, then the same set
        shutil.rmtree(tmp)                           # the old folder, now under the link's temporary name
    else:                                            # no renameat2 here: a moment without a repository
        old = _sibling(repository, LINK_MARK, "old-")   # (a kill in it: the repair links the adopted copy)
        repository.rename(old)
        os.replace(tmp, repository)
        shutil.rmtree(old)
    _fsync_dir(repository.parent)
    return gen


def _adopted_copy(repository: Path) -> Path:
    """A whole copy of what the repository path shows, as a generation beside it (hard links: no
    bytes copied); named as adopted only once complete, so the repair never links a partial one."""
    partial = _sibling(repository, GEN_MARK, "partial-")          # junk to the repair until renamed
    try:
        shutil.copytree(repository, partial, symlinks=True, copy_function=_link_or_copy)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    gen = _sibling(repository, GEN_MARK, ADOPTED)
    partial.rename(gen)
    return gen


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where that is unavailable."""
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) != 0:
        err = ctypes.get_errno()
        if err in (22, 38, 95):                      # EINVAL, ENOSYS, EOPNOTSUPP: this filesystem cannot
            return False
        raise OSError(err, os.strerror(err), str(b))
    return True


def _next_generation(repository: Path, live: Path, drop: set[str]) -> Path:
    """A new generation holding every entry of ``live`` but ``drop``, hard-linked (no bytes copied)."""
    gen = _sibling(repository, GEN_MARK)
    gen.mkdir()
    for entry in live.iterdir():
        if entry.name in drop:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, gen / entry.name, symlinks=True, copy_function=_link_or_copy)
        else:
            os.link(entry, gen / entry.name, follow_symlinks=False)
    return gen


def _swap_in(repository: Path, live: Path, gen: Path) -> None:
    """Make ``gen`` the repository, then drop the old generation; before the swap, a failure (or
    Ctrl-C) removes ``gen`` and the repository is untouched."""
    try:
        for d in (p for p in gen.rglob("*") if p.is_dir()):
            _fsync_dir(d)
        _point(repository, gen)
    except BaseException as e:
        if live_generation(repository) != gen:
            shutil.rmtree(gen, ignore_errors=True)
        if isinstance(e, OSError):
            raise RepositoryError(f"publishing to {repository} failed ({e}); it is as it was before") from e
        raise
    shutil.rmtree(live, ignore_errors=True)


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


def _leftovers(repository: Path) -> list[Path]:
    """What killed publishes leave beside the repository: generations it does not point to, link
    files not yet renamed, the older scheme's backups."""
    live = live_generation(repository)
    out = [p for p in repository.parent.glob(f".{repository.name}{GEN_MARK}*") if p != live]
    out += list(repository.parent.glob(f".{repository.name}{LINK_MARK}*"))
    return out + list(repository.parent.glob(f".{repository.name}.old-*"))


def repair_interrupted_publish(repository: Path) -> list[str]:
    """Clean what a killed publish left. The repository already shows the old set or the new set;
    only two cases change what it shows: a kill while a plain folder was being adopted (the link is
    put back to it), and a backup of the older scheme (its journal is replayed). Returns one line
    per thing done, for the caller to print; empty when there was nothing to do."""
    repository = Path(repository)
    dead = [p for p in repository.parent.glob(f".{repository.name}.staging-*") if _owner_gone(p)]
    for staging in dead:
        shutil.rmtree(staging, ignore_errors=True)
    if not _leftovers(repository) and (repository.exists() or not repository.is_symlink()):
        return []                                    # nothing to repair: no lock needed (read-only mounts)
    with _publish_lock(repository):
        done = _repair_locked(repository)
    if dead and not done:
        done.append(f"removed the staging folder(s) of {len(dead)} killed publish(es) beside {repository}")
    elif dead:
        done[-1] += f" and the staging folder(s) of {len(dead)} killed build(s)"
    return done


OWNER = ".owner"    # in a staging folder: flocked by the build that stages there, for as long as it runs


def _owner_gone(staging: Path) -> bool:
    """Whether the build that made this staging folder is dead (its flock is free), or, for a folder
    without an owner file (made by an older version), whether it is more than 6 hours old."""
    import fcntl
    owner = staging / OWNER
    if not owner.is_file():
        try:
            return time.time() - staging.stat().st_mtime > 6 * 3600
        except FileNotFoundError:
            return False
    try:
        with open(owner, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
    except BlockingIOError:
        return False
    except FileNotFoundError:
        return False


def _repair_locked(repository: Path) -> list[str]:
    done: list[str] = []
    if not repository.exists():
        adopted = sorted(repository.parent.glob(f".{repository.name}{GEN_MARK}{ADOPTED}*"))
        if adopted:                                  # killed between the adopting rename and the link
            _point(repository, adopted[-1])
            done.append(f"linked {repository} back to {adopted[-1].name}")
    done += _replay_old_backups(repository)
    junk = [p for p in _leftovers(repository) if ".old-" not in p.name]
    for p in junk:
        if p.is_symlink() or p.is_file():
            p.unlink(missing_ok=True)
        else:
            shutil.rmtree(p, ignore_errors=True)
    if junk:
        done.append(f"removed {len(junk)} unfinished generation(s) a killed publish left beside {repository}")
    return done


def _replay_old_backups(repository: Path) -> list[str]:
    """The older scheme (renames inside a real folder, with a journal): put its old models back."""
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
    return [f"restored {', '.join(touched)} from a publish that was killed half-way"] if touched else []


def published_models(repository: Path) -> list[str]:
    repository = Path(repository)
    return sorted(p.name for p in repository.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if repository.is_dir() else []


def unpublish(repository: Path, names: Sequence[str]) -> list[str]:
    """Remove published models in one swap of the repository link: a kill at any point leaves every
    one of them still served or every one gone. Returns the models removed; a name that is not
    published is an error naming what is."""
    repository = Path(repository)
    have = published_models(repository)
    missing = [n for n in names if n not in have]
    if missing:
        raise RepositoryError(f"{repository} has no model {missing[0]!r}; it has: {', '.join(have) or 'none'}")
    with _publish_lock(repository):
        _repair_locked(repository)
        live = _adopt(repository)
        _swap_in(repository, live, _next_generation(repository, live, set(names)))
    return list(names)


@dataclass
class Staging:
    """Build model folders here, then ``publish`` swaps them into the repository all at once."""

    repository: Path
    root: Path = field(init=False)
    published: list[str] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        import fcntl
        self.repository = Path(self.repository)
        self.repository.parent.mkdir(parents=True, exist_ok=True)
        repair_interrupted_publish(self.repository)
        self.root = Path(tempfile.mkdtemp(prefix=f".{self.repository.name}.staging-", dir=self.repository.parent))
        self._owner = open(self.root / OWNER, "a")        # held until discard(): the kernel frees it if we die
        fcntl.flock(self._owner, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def model_dir(self, name: str) -> Path:
        return self.root / name

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self._owner.close()

    def publish(self) -> list[str]:
        """Validate every staged model, then build the next generation (the live one's other models
        hard-linked, the staged ones moved in) and swap the repository link to it in one rename. Any
        interruption before the swap (an error, Ctrl-C, kill -9) leaves the repository as it was;
        after it, the new set is whole."""
        staged = sorted(p for p in self.root.iterdir() if p.is_dir())
        try:
            for p in staged:
                validate_model_dir(p)
        except RepositoryError:
            self.discard()
            raise
        try:
            with _publish_lock(self.repository):
                _repair_locked(self.repository)          # a publish killed since this staging began
                live = _adopt(self.repository)
                gen = _next_generation(self.repository, live, {p.name for p in staged})
                try:
                    for p in staged:
                        p.rename(gen / p.name)
                except BaseException:
                    shutil.rmtree(gen, ignore_errors=True)
                    raise
                _swap_in(self.repository, live, gen)
                self.published = [p.name for p in staged]   # said by an interrupt during the clean-up below
        except OSError as e:
            raise RepositoryError(f"publishing to {self.repository} failed ({e}); it is as it was before") from e
        finally:
            self.discard()
        return [p.name for p in staged]

    def __enter__(self) -> "Staging":
        return self

    def __exit__(self, *exc) -> None:
        self.discard()
