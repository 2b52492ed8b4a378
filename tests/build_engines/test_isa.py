"""The CPU's integer ISA decides the CPU INT8 recipe, and a served INT8 model checks its machine."""

import pytest

from build_engines import isa


@pytest.mark.parametrize("flags,want", [
    ({"avx2", "avx512f", "avx512_vnni", "avx_vnni"}, "avx512_vnni"),
    ({"avx2", "avx_vnni"}, "avx_vnni"),
    ({"avx2", "fma"}, "avx2"),                     # the AMD EPYC of the issue: no VNNI
    ({"avx2", "amx_int8", "avx512_vnni"}, "amx_int8"),
    (set(), "other"),
])
def test_isa_from_cpu_flags(monkeypatch, flags, want):
    monkeypatch.delenv(isa.ISA_ENV, raising=False)
    assert isa.int8_isa(flags) == want


def test_this_machine_is_read_from_proc_cpuinfo(monkeypatch):
    monkeypatch.delenv(isa.ISA_ENV, raising=False)
    flags = isa.cpu_flags()
    assert isa.int8_isa() == isa.int8_isa(flags)
    assert ("avx512_vnni" in flags or "avx_vnni" in flags or "amx_int8" in flags) == isa.exact_on(isa.int8_isa())


def test_recipe_follows_the_isa_and_can_be_forced(monkeypatch):
    monkeypatch.delenv(isa.RECIPE_ENV, raising=False)
    assert isa.cpu_recipe("avx512_vnni") == "full"
    assert isa.cpu_recipe("avx2") == "reduce_range"
    assert isa.cpu_recipe("other") == "reduce_range"
    assert isa.cpu_recipe("avx512_vnni", "reduce_range") == "reduce_range"
    monkeypatch.setenv(isa.RECIPE_ENV, "full")
    assert isa.cpu_recipe("avx2", "auto") == "full"
    monkeypatch.setenv(isa.RECIPE_ENV, "fast")
    with pytest.raises(ValueError, match="unknown"):
        isa.cpu_recipe("avx2")


def test_forced_isa_is_checked(monkeypatch):
    monkeypatch.setenv(isa.ISA_ENV, "avx2")
    assert isa.int8_isa({"avx512_vnni"}) == "avx2"
    monkeypatch.setenv(isa.ISA_ENV, "sse9")
    with pytest.raises(ValueError, match=isa.ISA_ENV):
        isa.int8_isa()


def test_serving_refusal_names_both_isas():
    why = isa.serving_refusal("full", "avx512_vnni", "avx2")
    assert "avx512_vnni" in why and "avx2" in why and "reduce_range" in why and "\n" not in why
    assert isa.serving_refusal("full", "avx512_vnni", "amx_int8") is None
    assert isa.serving_refusal("reduce_range", "avx2", "avx512_vnni") is None   # 7-bit weights are exact everywhere


@pytest.mark.parametrize("flags,probe,want", [
    ({"avx2", "avx512_vnni"}, 1_048_544, "avx2"),           # qemu -cpu Haswell on a VNNI host: the kernels win
    ({"avx2"}, isa.PROBE_EXACT, "vnni_unlisted"),           # a hypervisor hiding VNNI from /proc/cpuinfo
    ({"avx2", "avx512_vnni"}, isa.PROBE_EXACT, "avx512_vnni"),
    ({"avx2"}, 1_048_544, "avx2"),
    ({"avx2", "avx512_vnni"}, None, "avx512_vnni"),        # no ONNX Runtime to probe: the flags' label
])
def test_the_kernel_probe_overrules_the_flags(monkeypatch, flags, probe, want):
    monkeypatch.delenv(isa.ISA_ENV, raising=False)
    monkeypatch.setattr(isa, "cpu_flags", lambda cpuinfo="/proc/cpuinfo": flags)
    monkeypatch.setattr(isa, "kernel_probe", lambda: probe)
    assert isa.int8_isa() == want
    assert isa.exact_on(want) == (probe == isa.PROBE_EXACT if probe is not None else isa.exact_on(isa.flags_isa(flags)))
    if not isa.exact_on(want):
        why = isa.serving_refusal("full", "avx512_vnni")
        assert f"this CPU is {want}" in why and (probe is None or f"summed to {probe:,}" in why)


def test_this_cpus_isa_is_what_its_kernels_do(monkeypatch):
    """Whatever /proc/cpuinfo says, the ISA planned for is exact exactly when the probe is; the probe is quick."""
    import time
    monkeypatch.delenv(isa.ISA_ENV, raising=False)
    isa.kernel_probe.cache_clear()
    t = time.perf_counter()
    exact = isa.kernels_exact()
    assert time.perf_counter() - t < 10
    assert exact is not None and isa.exact_on(isa.int8_isa()) == exact
