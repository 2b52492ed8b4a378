"""ONNX -> TensorRT plan on a GPU node, thin over Polygraphy's loaders (TensorRT imported lazily).

TensorRT 10.x/11 compile precision from the graph: the network is strongly typed, the FP16 casts
and INT8 Q/DQ nodes in the ONNX decide the precision, and no builder precision flags are set.
The optimization profile is derived from the repository config so the two always agree:
min = 1, opt = largest preferred batch, max = max_batch_size.
A plan only loads in a Triton built with the same TensorRT version: the version is recorded in a
sidecar JSON and in the config's parameters.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from build_engines.errors import ToolMissing
from build_engines.repository import ServingConfig
from build_engines.spec import ModelSpec

DEFAULT_DYNAMIC_RANGE = (1, 128, 256)  # min/opt/max for non-batch -1 axes (e.g. sequence length)


def tensorrt_available() -> tuple[bool, str]:
    """(usable, reason). Usable needs the tensorrt module and an NVIDIA GPU."""
    gpu = bool(shutil.which("nvidia-smi")) or Path("/dev/nvidiactl").exists()
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        if gpu:     # seen on a lent H200 with no route to NVIDIA's index (records/gpu-check.json)
            return False, ("TensorRT is not installed on this GPU node: pip install '.[tensorrt]' where NVIDIA's "
                           "index (pypi.nvidia.com) is reachable, or run in the NGC Triton container, which has it")
        return False, ("no NVIDIA GPU here and TensorRT is not installed (pip install '.[tensorrt]' works only where "
                       "NVIDIA's index is reachable, i.e. on a GPU node or in the NGC container)")
    if not gpu:
        return False, "no NVIDIA GPU on this machine (nvidia-smi and /dev/nvidiactl missing)"
    return True, ""


def profile_shapes(spec: ModelSpec, serving: ServingConfig) -> dict[str, tuple[tuple[int, ...], ...]]:
    """min/opt/max shapes per input, derived from max_batch_size and the preferred batches."""
    rng = spec.dynamic_range or DEFAULT_DYNAMIC_RANGE
    shapes = {}
    for t in spec.inputs:
        dims = [(d, d, d) if d != -1 else rng for d in t.shape]
        shapes[t.name] = tuple(
            (b, *(d[k] for d in dims)) for k, b in enumerate((1, serving.opt_batch, serving.max_batch_size))
        )
    return shapes


def plan_from_onnx(onnx_path: Path, plan_path: Path, spec: ModelSpec, serving: ServingConfig,
                   timing_cache: Path) -> dict[str, object]:
    ok, why = tensorrt_available()
    if not ok:
        raise ToolMissing(f"TensorRT compile skipped: {why}")
    import tensorrt as trt
    from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, NetworkFromOnnxPath, Profile, SaveEngine

    profile = Profile()
    for name, (lo, opt, hi) in profile_shapes(spec, serving).items():
        profile.add(name, min=lo, opt=opt, max=hi)
    timing_cache = Path(timing_cache)
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)
    config = CreateConfig(profiles=[profile], load_timing_cache=str(timing_cache) if timing_cache.exists() else None)
    tmp = plan_path.with_suffix(".plan.tmp")
    SaveEngine(EngineFromNetwork(network, config, save_timing_cache=str(timing_cache)), str(tmp))()
    tmp.replace(plan_path)
    meta = {"tensorrt_version": trt.__version__, "onnx": str(onnx_path), "strongly_typed": True,
            "profile": {k: [list(s) for s in v] for k, v in profile_shapes(spec, serving).items()},
            "timing_cache": str(timing_cache)}
    plan_path.with_suffix(".plan.json").write_text(json.dumps(meta, indent=2))
    return meta
