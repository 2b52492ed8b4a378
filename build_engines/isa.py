"""Which integer dot-product instructions this CPU has, and the CPU INT8 recipe that is exact on it.

ONNX Runtime's x86 integer kernels (u8s8 GEMM/Conv) pick their code path by CPUID. With VNNI
(AVX-VNNI, AVX-512 VNNI) or AMX the products of uint8 activations and int8 weights are summed in
32 bits: exact. Without them (AVX2 only) pairs of products are summed into 16 bits with
saturation: two products of 255 x 127 overflow, so a graph that is right under exact Q/DQ
arithmetic serves wrong numbers (digits: 25 % relative logit error; a 1-D conv: chance).
Weights quantized to 7 bits (ONNX Runtime's ``reduce_range``) keep every pair sum under 2^15
(2 x 255 x 64 = 32,640), so that recipe is exact on every x86 CPU.

The flags in /proc/cpuinfo are only a label: under an emulator (``qemu-x86_64 -cpu Haswell``) or
some hypervisors they name instructions the kernels cannot use. What decides is a probe of ONNX
Runtime itself: one MatMulInteger of 64 products 255 x 127, which sums to 2,072,640 when the
kernels accumulate in 32 bits and to 1,048,544 (32 saturated pairs of 32,767) on the AVX2 path.
It takes under a second natively (about 2 s under emulation) and runs once per process.

This module is standard library only at import (the probe imports numpy, onnx and onnxruntime
when it runs): the repository copies it beside the Triton-side ``model.py`` so a served INT8 model
checks the machine it is loaded on.

Environment variables (for tests and for building on one machine for another):
    TCK_CPU_ISA          pretend the CPU is this ISA (one of ISAS), e.g. ``avx2`` on a VNNI machine
    TCK_CPU_INT8_RECIPE  force the CPU INT8 recipe (one of RECIPES) instead of the ISA's choice
"""

from __future__ import annotations

import functools
import os

# "vnni_unlisted": the kernels accumulate exactly though /proc/cpuinfo lists no VNNI (the probe says so)
ISAS = ("amx_int8", "avx512_vnni", "avx_vnni", "vnni_unlisted", "avx2", "other")
EXACT_INT32 = ("amx_int8", "avx512_vnni", "avx_vnni", "vnni_unlisted")   # 32-bit accumulation of u8 x s8 products
PROBE_K = 64                                            # products in the probe's one dot product
PROBE_EXACT = PROBE_K * 255 * 127                       # 2,072,640: what 32-bit accumulation gives
RECIPES = ("full", "reduce_range")                     # 8-bit or 7-bit weights (uint8 activations both)
ISA_ENV, RECIPE_ENV = "TCK_CPU_ISA", "TCK_CPU_INT8_RECIPE"


class IsaSettingError(ValueError):
    """TCK_CPU_ISA or TCK_CPU_INT8_RECIPE holds a value this module does not know."""


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def flags_isa(flags: set[str]) -> str:
    """The integer dot-product ISA these CPU flags name (a label: the kernels may disagree)."""
    for isa in ("amx_int8", "avx512_vnni", "avx_vnni", "avx2"):
        if isa in flags:
            return isa
    return "other"


@functools.lru_cache(maxsize=1)
def kernel_probe() -> int | None:
    """What ONNX Runtime's u8 x s8 MatMulInteger gives for 64 products of 255 x 127 on this CPU:
    PROBE_EXACT where it accumulates in 32 bits, less where it saturates; None without ONNX Runtime."""
    try:
        import numpy as np
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    weights = numpy_helper.from_array(np.full((PROBE_K, 1), 127, np.int8), "b")
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "int8_probe",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, PROBE_K])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 1])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return int(session.run(None, {"a": np.full((1, PROBE_K), 255, np.uint8)})[0].ravel()[0])


def kernels_exact() -> bool | None:
    """Whether this CPU's integer kernels accumulate exactly, by the probe; None if it cannot run."""
    got = kernel_probe()
    return None if got is None else got == PROBE_EXACT


def hardware_isa(flags: set[str] | None = None) -> str:
    """What the CPU's integer kernels really do (whatever TCK_CPU_ISA says). Given flags: their label.
    On this machine: the flags' label where the probe agrees with it; where it does not, the probe
    wins ("avx2" for saturating kernels under flags that name VNNI, "vnni_unlisted" the other way)."""
    if flags is not None:
        return flags_isa(flags)
    label = flags_isa(cpu_flags())
    exact = kernels_exact()
    if exact is None or exact == exact_on(label):
        return label
    return "vnni_unlisted" if exact else "avx2"


def int8_isa(flags: set[str] | None = None) -> str:
    """The integer dot-product ISA the build plans for: amx_int8, avx512_vnni, avx_vnni, avx2 or other
    (TCK_CPU_ISA overrides the hardware, to build for or test as another machine)."""
    return _forced_isa() or hardware_isa(flags)


def _forced_isa() -> str:
    """TCK_CPU_ISA, checked ('' when unset)."""
    forced = os.environ.get(ISA_ENV, "").strip()
    if forced and forced not in ISAS:
        raise IsaSettingError(f"{ISA_ENV}={forced!r}: use one of {', '.join(ISAS)}")
    return forced


def check_settings() -> None:
    """Refuse a TCK_CPU_ISA or TCK_CPU_INT8_RECIPE this module does not know (no probe run)."""
    _forced_isa()
    cpu_recipe("avx2")


def exact_on(isa: str) -> bool:
    """Whether ONNX Runtime's 8-bit integer kernels accumulate exactly on this ISA."""
    return isa in EXACT_INT32


def cpu_recipe(isa: str, requested: str = "auto") -> str:
    """8-bit weights where the kernels are exact, 7-bit weights elsewhere; the environment or the
    spec may force one (the environment wins, so tests exercise both recipes on any machine)."""
    forced = os.environ.get(RECIPE_ENV, "").strip() or requested
    if forced == "auto":
        return "full" if exact_on(isa) else "reduce_range"
    if forced not in RECIPES:
        raise IsaSettingError(f"CPU INT8 recipe {forced!r} is unknown (spec or {RECIPE_ENV}); use auto or one of "
                              f"{', '.join(RECIPES)}")
    return forced


def serving_refusal(recipe: str, gated_isa: str, isa: str | None = None) -> str | None:
    """Why this machine must not serve an artifact of `recipe` that was gated on `gated_isa`, or None.
    A 7-bit-weight artifact is exact everywhere; an 8-bit one only where the kernels are exact."""
    probed = ""
    if isa is None:       # the hardware decides what the kernels do; a forced ISA may only be stricter
        hw, planned = hardware_isa(), int8_isa()
        isa = planned if not exact_on(planned) else hw
        got = kernel_probe()
        if got is not None and got != PROBE_EXACT:
            probed = f"; probed: {PROBE_K} products of 255 x 127 summed to {got:,}, not {PROBE_EXACT:,}"
    if recipe == "full" and not exact_on(isa):
        return (f"INT8 model gated on {gated_isa} with 8-bit weights, but this CPU is {isa} (no VNNI{probed}): ONNX "
                f"Runtime's integer kernels would saturate and serve wrong numbers. Rebuild it on this machine (make "
                f"engines) or with {RECIPE_ENV}=reduce_range, or serve the fp32 model here")
    return None
