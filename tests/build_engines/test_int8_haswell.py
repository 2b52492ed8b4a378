"""The INT8 checks on ONNX Runtime's AVX2 kernels for real, on any machine: this venv run under
``qemu-x86_64 -cpu Haswell`` (Debian's qemu-user-static, unpacked by ``make setup``), whose CPUID has
AVX2 and no VNNI while /proc/cpuinfo still shows the host's flags. The kernel probe, not the flags,
must say so; the ``full`` recipe must saturate there and ``reduce_range`` must not; and a served
``full`` model, its Python backend stub run under the same emulation by a real Triton, must refuse
to load while a ``reduce_range`` one serves the exact numbers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from build_engines import isa
from build_engines.gate import Evidence, gate, outputs_of, relative_error
from clients import LocalTriton, ServerError, TritonClient
from clients.server import TOOLS

QEMU = shutil.which("qemu-x86_64", path=str(TOOLS / "bin")) or shutil.which("qemu-x86_64") \
    or shutil.which("qemu-x86_64-static")
# Haswell less the features QEMU's TCG cannot emulate (each would print a warning per thread)
HASWELL = "Haswell,-pcid,-x2apic,-tsc-deadline,-hle,-invpcid,-rtm"
pytestmark = pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 is not installed (make setup unpacks Debian's "
                                "qemu-user-static into .tools/bin): the -cpu Haswell INT8 checks need it")

ORT_SCRIPT = """
import sys, numpy as np
from build_engines import isa
from build_engines.gate import outputs_of
inputs = dict(np.load(sys.argv[1]))
out = {"probe": np.array(isa.kernel_probe()), "isa": np.array(isa.int8_isa())}
for i, path in enumerate(sys.argv[3:]):
    out[f"served{i}"], out[f"exact{i}"] = outputs_of(path, inputs), outputs_of(path, inputs, exact=True)
np.savez(sys.argv[2], **out)
"""


def emulated(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env.pop(isa.ISA_ENV, None)
    env.pop(isa.RECIPE_ENV, None)
    return subprocess.run([QEMU, "-cpu", HASWELL, sys.executable, *args], cwd=Path(__file__).parents[2], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def haswell_outputs(digits_build, digits_spec, tmp_path_factory):
    """Both recipes' outputs on the held-out set, computed by ONNX Runtime under -cpu Haswell."""
    res, _ = digits_build
    work = tmp_path_factory.mktemp("haswell")
    from build_engines import precision
    cache = res.work_dir / "calib" / res.calibration["cache"]
    paths = [precision.cpu_int8_onnx_from_onnx(res.artifacts["fp32"]["onnx"], work / f"{r}.onnx", cache,
                                               precision.CalibrationSettings(), r) for r in isa.RECIPES]
    inputs, labels = digits_spec.resolve("evaluation")()
    np.savez(work / "inputs.npz", **inputs)
    run = emulated("-c", ORT_SCRIPT, str(work / "inputs.npz"), str(work / "out.npz"), *map(str, paths))
    assert run.returncode == 0, run.stderr[-3000:]
    got = np.load(work / "out.npz")
    return {r: (got[f"served{i}"], got[f"exact{i}"]) for i, r in enumerate(isa.RECIPES)}, got, inputs, labels, paths


def test_the_probe_reads_the_kernels_not_the_flags(haswell_outputs):
    _, got, _, _, _ = haswell_outputs
    assert int(got["probe"]) < isa.PROBE_EXACT          # 16-bit pair sums saturated: 1,048,544 measured
    assert str(got["isa"]) == "avx2"
    flags = isa.flags_isa(isa.cpu_flags())                # the host's flags, which qemu-user passes through
    assert isa.kernels_exact() == isa.exact_on(flags)     # natively the probe and the flags agree
    assert isa.int8_isa() == flags


@pytest.mark.parametrize("recipe", isa.RECIPES)
def test_both_recipes_against_exact_qdq_arithmetic_on_avx2_kernels(haswell_outputs, digits_build, digits_spec, recipe):
    """reduce_range is exact on AVX2; full saturates there, and the gate names it a kernel error with its fix."""
    outs, _, inputs, labels, _ = haswell_outputs
    res, _ = digits_build
    ref = outputs_of(res.artifacts["fp32"]["onnx"], inputs)
    served, exact = outs[recipe]
    g = gate(digits_spec, f"int8_cpu_{recipe}", Evidence(served, exact=exact), ref, labels, "avx2", recipe)
    assert g.details["exact"]["agreement"] >= 0.995 and g.details["exact"]["relative_error"] <= 0.05
    if recipe == "reduce_range":
        assert g.passed and not g.kernel_error, g.reasons
        assert relative_error(served, exact) < 0.02       # rounding of the fused kernels only
    else:   # measured: agreement 0.986, relative logit error 0.247 against exact
        assert g.kernel_error and "reduce_range" in g.fix, g.reasons
        assert relative_error(served, exact) > 0.1


def _emulated_backends(root: Path) -> Path:
    """A backend directory whose Python stub runs under qemu -cpu Haswell (the real stub, exec'd)."""
    src, dst = TOOLS / "backends" / "python", root / "backends" / "python"
    dst.mkdir(parents=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        (dst / name).symlink_to((src / name).resolve())
    stub = dst / "triton_python_backend_stub"
    stub.write_text(f'#!/bin/sh\nexec "{QEMU}" -cpu {HASWELL} "{(src / stub.name).resolve()}" "$@"\n')
    stub.chmod(0o755)
    return root / "backends"


def _only_int8(repo: Path, recipe: str, gated: str, onnx: Path | None = None) -> None:
    """Keep digits_int8 alone, its recipe parameters set (and its artifact replaced by ``onnx``)."""
    from build_engines.repository import config_text, parse_config
    for p in list(repo.iterdir()):
        if p.name != "digits_int8":
            shutil.rmtree(p)
    cfg_path = repo / "digits_int8" / "config.pbtxt"
    cfg = parse_config(cfg_path.read_text())
    cfg.parameters["int8_recipe"].string_value = recipe
    cfg.parameters["int8_gated_isa"].string_value = gated
    cfg_path.write_text(config_text(cfg))
    if onnx is not None:
        shutil.copyfile(onnx, repo / "digits_int8" / "1" / cfg.parameters["onnx_file"].string_value)


def _emulated_server(repo: Path, tmp_path: Path, log: str) -> LocalTriton:
    return LocalTriton(repo, log_path=tmp_path / log, backend_directory=_emulated_backends(tmp_path),
                       ready_timeout_s=300, extra_args=["--backend-config=python,stub-timeout-seconds=240"])


def test_served_full_recipe_refuses_to_load_on_avx2_kernels(copy_repo, tmp_path):
    _only_int8(copy_repo, "full", "avx512_vnni")
    with pytest.raises(ServerError) as e:
        with _emulated_server(copy_repo, tmp_path, "refuse.log"):
            pass
    msg = str(e.value)
    assert "digits_int8" in msg and "this CPU is avx2" in msg and "summed to 1,048,544" in msg, msg


def test_served_reduce_range_answers_exactly_on_avx2_kernels(copy_repo, tmp_path, haswell_outputs):
    outs, _, inputs, _, paths = haswell_outputs
    _only_int8(copy_repo, "reduce_range", "avx2", paths[isa.RECIPES.index("reduce_range")])
    x = inputs["image"][:8]
    with _emulated_server(copy_repo, tmp_path, "ok.log") as srv, \
            TritonClient(srv.grpc_url, "digits_int8", protocol="grpc", timeout_s=120) as c:
        got = c.infer({"image": x})["logits"]
    served, exact = (a[:8] for a in outs["reduce_range"])   # ONNX Runtime under Haswell, and exact arithmetic
    assert np.abs(got - served).max() < 1e-4 * np.abs(served).max()
    assert relative_error(got, exact) < 0.02
