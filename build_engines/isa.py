"""Which integer dot-product instructions this CPU has, and the CPU INT8 recipe that is exact on it.

ONNX Runtime's x86 integer kernels (u8s8 GEMM/Conv) pick their code path by CPUID. With VNNI
(AVX-VNNI, AVX-512 VNNI) or AMX the products of uint8 activations and int8 weights are summed in
32 bits: exact. Without them (AVX2 only) pairs of products are summed into 16 bits with
saturation: two products of 255 x 127 overflow, so a graph that is right under exact Q/DQ
arithmetic serves wrong numbers (digits: 25 % relative logit error; a 1-D conv: chance).
Weights quantized to 7 bits (ONNX Runtime's ``reduce_range``) keep every pair sum under 2^15
(2 x 255 x 64 = 32,640), so that recipe is exact on every x86 CPU.

This module is standard library only: the repository copies it beside the Triton-side
``model.py`` so a served INT8 model checks the machine it is loaded on.

Environment variables (for tests and for building on one machine for another):
    TCK_CPU_ISA          pretend the CPU is this ISA (one of ISAS), e.g. ``avx2`` on a VNNI machine
    TCK_CPU_INT8_RECIPE  force the CPU INT8 recipe (one of RECIPES) instead of the ISA's choice
"""

from __future__ import annotations

import os

ISAS = ("amx_int8", "avx512_vnni", "avx_vnni", "avx2", "other")
EXACT_INT32 = ("amx_int8", "avx512_vnni", "avx_vnni")   # 32-bit accumulation of u8 x s8 products
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


def hardware_isa(flags: set[str] | None = None) -> str:
    """What the CPU really has (ONNX Runtime's kernels follow this, whatever TCK_CPU_ISA says)."""
    flags = cpu_flags() if flags is None else flags
    for isa in ("amx_int8", "avx512_vnni", "avx_vnni", "avx2"):
        if isa in flags:
            return isa
    return "other"


def int8_isa(flags: set[str] | None = None) -> str:
    """The integer dot-product ISA the build plans for: amx_int8, avx512_vnni, avx_vnni, avx2 or other
    (TCK_CPU_ISA overrides the hardware, to build for or test as another machine)."""
    forced = os.environ.get(ISA_ENV, "").strip()
    if forced:
        if forced not in ISAS:
            raise IsaSettingError(f"{ISA_ENV}={forced!r}: use one of {', '.join(ISAS)}")
        return forced
    return hardware_isa(flags)


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
    if isa is None:       # the hardware decides what the kernels do; a forced ISA may only be stricter
        hw, planned = hardware_isa(), int8_isa()
        isa = planned if not exact_on(planned) else hw
    if recipe == "full" and not exact_on(isa):
        return (f"INT8 model gated on {gated_isa} with 8-bit weights, but this CPU is {isa} (no VNNI): ONNX Runtime's "
                f"integer kernels would saturate and serve wrong numbers. Rebuild it on this machine (make engines) "
                f"or with {RECIPE_ENV}=reduce_range, or serve the fp32 model here")
    return None
