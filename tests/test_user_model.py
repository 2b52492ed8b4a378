"""A user's model, not one of ours, driven as a new user would: a spec in a folder outside the clone
(tests/usermodels/clicks: float and int64 inputs, a variable-length axis, an embedding table, a GRU and
two outputs), its mistakes, a real build, a real Triton with broken models beside it, and Ctrl-C."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from build_engines.pipeline import BuildRecord, Pipeline
from build_engines.repository import ServingConfig, read_config, serving_from_config
from build_engines.spec import load_spec
from clients import LocalTriton, TritonClient
from tck.main import main

HERE = Path(__file__).parent
ROOT = HERE.parent


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The user's own folder: their package beside their spec, nothing on PYTHONPATH."""
    root = tmp_path_factory.mktemp("userproj")
    shutil.copytree(HERE / "usermodels" / "clicks", root / "clicks")
    shutil.copy(HERE / "usermodels" / "clicks.toml", root / "clicks.toml")
    return root


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("userbuild")     # the trained checkpoint is cached here across tests


@pytest.fixture(scope="module")
def built(project, build_dir, tmp_path_factory):
    """A real build of every precision, timed, published to a repository of its own."""
    repo = tmp_path_factory.mktemp("userrepo") / "repo"
    spec = load_spec(project / "clicks.toml")
    res = Pipeline(spec, build_dir / spec.name).run(repo, "cpu", ServingConfig.from_spec(spec), tensorrt=False)
    return spec, res, repo


def variant_spec(project: Path, old: str, new: str, name: str = "bad.toml") -> Path:
    text = (project / "clicks.toml").read_text()
    assert old in text, old
    path = project / name
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize("old,new,said", [
    ("budget = 2.0", "budgett = 2.0", ["'accuracy.budgett' is unknown in [accuracy]", "did you mean 'budget'"]),
    ("budget = 2.0", 'budget = "half"', ["'accuracy.budget' must be a number", "'half'"]),
    ('factory = "clicks:build"', 'factroy = "clicks:build"', ["'factroy' is unknown", "did you mean 'factory'"]),
    ('name = "dense"\ndtype', 'name = "dense"\ndtpye', ["'inputs[0].dtpye' is unknown", "did you mean 'dtype'"]),
    ("max_batch_size = 16", "max_batch_size = 16.5", ["'serving.max_batch_size' must be an integer"]),
    ("[data]", '[python]\npath = ["nowhere"]\n[data]', ["'python.path[0]'", "is not a folder"]),
    ('name = "tokens"\ndtype = "int64"', 'name = "tokens"\ndtype = "float32"',
     ["'inputs[1].dtype'", "'tokens' is declared float32", "evaluation data is int64"]),
    ("shape = [13]", "shape = [12]", ["'inputs[0].shape'", "'dense'", "[12]", "[13]"]),
    ('name = "score"\ndtype = "float32"', 'name = "score"\ndtype = "int64"',
     ["'outputs[1].dtype'", "'score' is declared int64", "returns float32"]),
    ('name = "score"\ndtype = "float32"\nshape = [1]', 'name = "score"\ndtype = "float32"\nshape = [3]',
     ["'outputs[1].shape'", "'score'", "[3]", "returns [1]"]),
    ("[data]", '[[outputs]]\nname = "extra"\ndtype = "float32"\nshape = [1]\n[data]',
     ["field 'outputs'", "returns 2 output(s)", "declares 3"]),
    # the user's own code failing: one line naming the field, never a traceback
    ('factory = "clicks:build"', 'factory = "clicks.mistakes:factory_raises"',
     ["field 'factory' (clicks.mistakes:factory_raises) raised FileNotFoundError", "checkpoint ctr.pt not found"]),
    ('factory = "clicks:build"', 'factory = "clicks.mistakes:factory_needs_arg"', ["field 'factory'", "takes size"]),
    ('factory = "clicks:build"', 'factory = "clicks.mistakes:factory_unexportable"',
     ["field 'factory': torch.onnx.export cannot export the model", "to see the whole error"]),
    ('evaluation = "clicks:evaluation"', 'evaluation = "clicks.mistakes:evaluation_raises"',
     ["field 'data.evaluation' (clicks.mistakes:evaluation_raises) raised ValueError", "clicks.csv line 3"]),
    ('evaluation = "clicks:evaluation"', 'evaluation = "clicks.mistakes:evaluation_lists"',
     ["field 'data.evaluation'", "'dense' is list, not a numpy array"]),
    ('evaluation = "clicks:evaluation"', '', ["field 'data.evaluation' is missing"]),
    ('evaluation = "clicks:evaluation"', 'evaluation = "clicks.mistakes:evaluation_float64"',
     ["'inputs[0].dtype'", "evaluation data is float64", ".astype(np.float32)", "float64 is not served"]),
    # -1 where the model takes one size only
    ("shape = [13]", "shape = [-1]", ["'inputs[0].shape'", "'dense'", "declared dynamic (-1)", "declare its size, 13"]),
    ('name = "logits"\ndtype = "float32"\nshape = [2]', 'name = "logits"\ndtype = "float32"\nshape = [-1]',
     ["'outputs[0].shape'", "'logits' is declared dynamic (-1)", "always has 2", "declare shape = [2]"]),
    ("[data]", '[quantization]\nops = ["MatMull"]\n[data]', ["'quantization.ops[0]'", "did you mean 'MatMul'"]),
    ("[serving]", "[serving]\ndynamic = true", ["'serving.dynamic' is unknown"]),
    ("max_batch_size = 16", "max_batch_size = true", ["'serving.max_batch_size' must be an integer, got true"]),
])
def test_a_spec_mistake_fails_in_one_line_and_publishes_nothing(project, build_dir, tmp_path, capsys, old, new, said):
    spec = variant_spec(project, old, new)
    repo = tmp_path / "repo"
    rc = main(["engines", "--model", str(spec), "--precisions", "fp32", "--build-dir", str(build_dir),
               "--repository", str(repo)])
    err = capsys.readouterr().err
    failed = [line for line in err.splitlines() if line.startswith("engines: FAILED")]
    assert rc == 2 and len(failed) == 1, err
    assert all(s in failed[0] for s in said), failed[0]
    assert str(spec) in failed[0] and "Traceback" not in err
    assert not repo.exists()


@pytest.mark.parametrize("old,new,said", [
    ('calibration = "clicks:calibration"', 'calibration = "clicks.mistakes:calibration_raises"',
     ["field 'data.calibration' (clicks.mistakes:calibration_raises) raised OSError", "shard 2 is unreadable"]),
    ("[data]", '[quantization]\nops = ["Conv"]\n[data]',
     ["'quantization.ops' is ['Conv']", "has none of them", "nothing would be INT8", "GRU, Gather, Gemm"]),
])
def test_an_int8_mistake_fails_in_one_line_and_publishes_nothing(project, build_dir, tmp_path, capsys, old, new, said):
    spec = variant_spec(project, old, new)
    repo = tmp_path / "repo"
    rc = main(["engines", "--model", str(spec), "--precisions", "fp32,int8", "--no-tensorrt", "--build-dir",
               str(build_dir), "--repository", str(repo)])
    err = capsys.readouterr().err
    failed = [line for line in err.splitlines() if line.startswith("engines: FAILED")]
    assert rc == 2 and len(failed) == 1, err
    assert all(s in failed[0] for s in said), failed[0]
    assert "Traceback" not in err and not repo.exists()


def test_every_export_in_one_process_keeps_the_sequence_axis_dynamic(project, build_dir, tmp_path):
    """torch 2.13 unrolls a GRU at the sample's length on a process's second export (its dispatch
    cache); a second build in one process must still publish a graph that takes every length."""
    from build_engines.export import onnx_from_torch
    import onnx
    spec = load_spec(project / "clicks.toml")
    feed = spec.evaluation_batches()[0][0]
    for i in range(2):
        path = onnx_from_torch(spec.make_model(build_dir / spec.name), spec, feed, tmp_path / f"m{i}.onnx")
        tokens = next(x for x in onnx.load(str(path)).graph.input if x.name == "tokens")
        assert [d.dim_param != "" for d in tokens.type.tensor_type.shape.dim] == [True, True], (i, tokens)
        assert any(n.op_type == "GRU" for n in onnx.load(str(path)).graph.node)   # not unrolled


def test_a_ctrl_c_torch_turns_into_an_error_of_its_own_is_still_an_interrupt(project, build_dir, tmp_path):
    """A SIGINT landing in torch's lazy imports comes out of torch.onnx.export as its own error (seen:
    TorchExportError over 'Artifact ... already registered'): the signal the CLI's handler saw decides."""
    from build_engines.errors import Interrupted, SpecError, forget_signals, note_signal
    from build_engines.export import onnx_from_torch
    spec = load_spec(variant_spec(project, 'factory = "clicks:build"', 'factory = "clicks.mistakes:factory_unexportable"',
                                  "unexportable.toml"))
    feed = spec.evaluation_batches()[0][0]
    model = spec.make_model(build_dir / spec.name)
    with pytest.raises(SpecError, match="cannot export the model"):
        onnx_from_torch(model, spec, feed, tmp_path / "m.onnx")
    note_signal(signal.SIGINT)
    try:
        with pytest.raises(Interrupted) as e:
            onnx_from_torch(model, spec, feed, tmp_path / "m.onnx")
        assert e.value.signum == signal.SIGINT
    finally:
        forget_signals()
    assert not (tmp_path / "m.onnx").exists()


def test_the_users_package_imports_from_the_specs_folder_and_never_shadows_ours(project, tmp_path):
    """A fresh interpreter without PYTHONPATH imports the user's package from beside the spec; a folder
    of theirs named like one of our packages (clients) does not replace ours."""
    (project / "clients").mkdir(exist_ok=True)
    (project / "clients" / "__init__.py").write_text("raise ImportError('the user clients package')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONDONTWRITEBYTECODE": "1"}
    code = ("import sys; from build_engines.spec import load_spec; import clients\n"
            f"s = load_spec({str(project / 'clicks.toml')!r})\n"
            f"m = s.make_model(__import__('pathlib').Path({str(tmp_path)!r}))\n"
            "import importlib; importlib.reload(clients)\n"
            "print(type(m).__name__, clients.__file__, sys.path.index(s.python_path[0]) > sys.path.index(''))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    name, clients_file, after = out.stdout.split()
    assert name == "Clicks" and clients_file.startswith(str(ROOT)) and after == "True"


def test_commands_that_need_only_the_name_never_run_the_users_code(project, tmp_path, capsys):
    """unpublish (and report/manifests) by a spec path read its name: a spec whose package is broken or
    gone still unpublishes; a spec with nothing published says so, exit 2."""
    spec = variant_spec(project, 'factory = "clicks:build"', 'factory = "gone.module:build"', "gone.toml")
    repo = tmp_path / "repo"
    for n in ("clicks_fp32", "other_fp32"):
        (repo / n / "1").mkdir(parents=True)
        (repo / n / "config.pbtxt").write_text(f'name: "{n}"\n')
    assert main(["unpublish", str(spec), "--repository", str(repo)]) == 0
    assert sorted(p.name for p in repo.iterdir()) == ["other_fp32"]
    assert main(["unpublish", str(spec), "--repository", str(repo)]) == 2
    assert "none of its models (clicks_fp32, clicks_fp16, clicks_int8) is in" in capsys.readouterr().err
    assert main(["manifests", "--model", str(project / "nowhere.toml")]) == 2
    assert "'" + str(project / "nowhere.toml") + "' not found (no such file)" in capsys.readouterr().err


def test_build_says_what_each_precision_changes(built):
    spec, res, repo = built
    rec = BuildRecord.read(res.report_path)
    cpu, fp16 = rec.variants["int8_cpu"].coverage, rec.variants["fp16"].coverage
    # the recurrent op has no INT8 Q/DQ: it stays FP32, and the build says so
    assert cpu.float_ops.get("GRU") == 1 and cpu.reduced_ops.get("Gemm") == 2 and cpu.reduced_ops.get("Gather") == 1
    assert 0.0 < cpu.weights_reduced < 1.0 and "stays FP32: GRU x1 (recurrent" in cpu.text()
    assert fp16.reduced_ops.get("GRU") == 1 and fp16.weights_reduced == 1.0
    int8_step = next(s for s in rec.steps if s.name.startswith("int8"))
    assert "GRU" in int8_step.detail
    # every variant's speed against FP32, in the same words whether faster or slower
    timing = next(s for s in rec.steps if s.name == "onnxruntime timing").detail
    for name in ("fp16", "int8_qdq", "int8_cpu"):
        assert set(rec.variants[name].speed_over_fp32) == {"batch_1", "batch_4"}
        assert f"{name} vs FP32" in timing
    assert sorted(res.published) == ["clicks_fp16", "clicks_fp32", "clicks_int8"]
    tokens = next(i for i in read_config(repo / "clicks_int8").input if i.name == "tokens")
    assert tokens.data_type == 9 and list(tokens.dims) == [-1]     # TYPE_INT64, the graph's
    # a variable-length input: batches never fill, so the backlog bound is off by default (ort_model.Backlog),
    # and the config read back gives the spec's default (-1), not an explicit 0
    cfg = read_config(repo / "clicks_int8")
    assert cfg.parameters["backlog_max"].string_value == "0"
    assert serving_from_config(cfg).backlog_max == -1


def _crashing_model(repo: Path, src: str, name: str) -> None:
    """A Python model whose load kills tritonserver (SIGSEGV), as the -11 exits users met."""
    shutil.copytree(repo / src, repo / name)
    cfg = (repo / name / "config.pbtxt").read_text().replace(f'name: "{src}"', f'name: "{name}"', 1)
    (repo / name / "config.pbtxt").write_text(cfg)
    (repo / name / "1" / "model.py").write_text(
        "import os, signal\nclass TritonPythonModel:\n    def initialize(self, args):\n"
        "        os.kill(os.getppid(), signal.SIGSEGV)\n")


def _wrong_dtype_model(repo: Path, src: str, name: str) -> None:
    """What an unchecked spec published: TYPE_FP32 for an input the ONNX graph takes as INT64."""
    shutil.copytree(repo / src, repo / name)
    cfg = (repo / name / "config.pbtxt").read_text().replace(f'name: "{src}"', f'name: "{name}"', 1)
    i = cfg.index('name: "tokens"')
    cfg = cfg[:i] + cfg[i:].replace("TYPE_INT64", "TYPE_FP32", 1)
    (repo / name / "config.pbtxt").write_text(cfg)


def test_serve_survives_bad_models_and_answers_like_pytorch(built, build_dir, tmp_path, capsys):
    spec, res, repo0 = built
    repo = tmp_path / "repo"
    shutil.copytree(repo0, repo)
    _wrong_dtype_model(repo, "clicks_fp32", "clicks_wrongtype")
    _crashing_model(repo, "clicks_fp32", "clicks_crash")
    (repo / "clicks_nofolder").mkdir()
    (repo / "clicks_nofolder" / "config.pbtxt").write_text('name: "clicks_nofolder"\nbackend: "python"\n')
    with LocalTriton(repo, load_each=True, log_path=tmp_path / "triton.log") as srv:
        assert sorted(srv.served) == ["clicks_fp16", "clicks_fp32", "clicks_int8"], srv.refused
        assert set(srv.refused) == {"clicks_wrongtype", "clicks_crash", "clicks_nofolder"}
        assert "'tokens' is TYPE_FP32 in the config, TYPE_INT64 in the graph" in srv.refused["clicks_wrongtype"]
        assert "killed tritonserver" in srv.refused["clicks_crash"]
        assert "no version folder" in srv.refused["clicks_nofolder"]
        assert all("\n" not in why for why in srv.refused.values())
        model = spec.make_model(build_dir / spec.name)
        feed, _ = spec.evaluation_batches()[1]
        feed = {k: v[:8] for k, v in feed.items()}
        with torch.no_grad():
            want = [t.numpy() for t in model(*(torch.from_numpy(feed[n]) for n in ("dense", "tokens")))]
        for protocol, url in (("http", srv.http_url), ("grpc", srv.grpc_url)):
            for name in ("clicks_fp32", "clicks_int8"):
                with TritonClient(url, name, protocol=protocol) as c:
                    got = c.infer(feed)
                tol = 1e-4 if name.endswith("fp32") else 0.1
                np.testing.assert_allclose(got["logits"], want[0], atol=tol)
                np.testing.assert_allclose(got["score"], want[1], atol=tol)
    # the broken ones go through the publish journal: nothing else touched, nothing left beside it
    assert main(["unpublish", "clicks_wrongtype", "clicks_crash", "clicks_nofolder", "--repository", str(repo)]) == 0
    assert sorted(p.name for p in repo.iterdir()) == ["clicks_fp16", "clicks_fp32", "clicks_int8"]
    assert _beside(repo) == ["repo", "triton.log"]
    assert main(["unpublish", "clicks_nope", "--repository", str(repo)]) == 2
    assert "'clicks_nope' is neither a model in" in capsys.readouterr().err


def test_serve_fails_only_when_no_model_loads(built, tmp_path, capsys):
    _, _, repo0 = built
    repo = tmp_path / "repo"
    shutil.copytree(repo0 / "clicks_fp32", repo / "clicks_fp32")
    _wrong_dtype_model(repo, "clicks_fp32", "clicks_wrongtype")
    shutil.rmtree(repo / "clicks_fp32")
    rc = main(["serve", "--repository", str(repo), "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"])
    err = capsys.readouterr().err
    assert rc == 1 and "NOT SERVED clicks_wrongtype" in err and "no model of the repository loads" in err


def _beside(repo: Path) -> list[str]:
    """What is in the repository's folder, less the generation its link points to."""
    from build_engines.repository import live_generation
    return sorted(p.name for p in repo.parent.iterdir() if p != live_generation(repo))


def _digests(repo: Path) -> dict[str, str]:
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(repo.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_build_says_so_in_one_line_and_keeps_the_old_models(built, project, tmp_path, signum, code):
    _, _, repo0 = built
    repo = tmp_path / "repo"
    shutil.copytree(repo0, repo)
    before = _digests(repo)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    p = subprocess.Popen([sys.executable, "-m", "tck", "engines", "--model", str(project / "clicks.toml"),
                          "--build-dir", str(tmp_path / "b"), "--repository", str(repo)],
                         cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.monotonic() + 120
    for line in p.stderr:                    # interrupt once the build is under way (the model loaded)
        lines.append(line)
        if "load model PASSED" in line or time.monotonic() > deadline:
            break
    p.send_signal(signum)
    _, rest = p.communicate(timeout=120)
    out = "".join(lines) + rest
    last = out.strip().splitlines()[-1]
    assert p.returncode == code, out
    assert last.startswith(f"engines: interrupted ({signal.Signals(signum).name}) during step '")
    assert "is as it was before (nothing published)" in last
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    assert _digests(repo) == before
    assert [n for n in _beside(repo) if n != "b"] == ["repo"]   # no lock, no staging, no unfinished generation


def _interrupt_when(args: list[str], marker: str, env: dict | None = None, signum=signal.SIGINT) -> tuple[int, str]:
    """Run tck with ``args``, send ``signum`` once stderr shows ``marker``; (exit code, stderr)."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1") | (env or {})
    p = subprocess.Popen([sys.executable, "-m", "tck", *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    lines, deadline = [], time.monotonic() + 300
    for line in p.stderr:
        lines.append(line)
        if marker in line or time.monotonic() > deadline:
            break
    p.send_signal(signum)
    _, rest = p.communicate(timeout=300)
    return p.returncode, "".join(lines) + rest


def test_interrupted_while_the_spec_loads_names_it(project, tmp_path):
    spec = variant_spec(project, 'factory = "clicks:build"', 'factory = "clicks.mistakes:factory_raises"', "slow.toml")
    repo = tmp_path / "repo"
    code, out = _interrupt_when(["engines", "--model", str(spec), "--build-dir", str(tmp_path / "b"),
                                 "--repository", str(repo)], "clicks.mistakes: importing", {"CLICKS_SLOW_IMPORT": "60"})
    last = out.strip().splitlines()[-1]
    assert code == 130, out
    assert last == (f"engines: interrupted (SIGINT) during loading the spec {spec}; nothing was published; "
                    f"the repository {repo} is as it was before"), last
    assert "Traceback" not in out and not repo.exists()


def test_interrupted_after_an_earlier_spec_published_says_what_was(built, project, build_dir, tmp_path):
    """Two specs in one command: the first built and published, Ctrl-C during the second's export."""
    second = variant_spec(project, 'name = "clicks"', 'name = "clicks_b"', "clicks_b.toml")
    for name in ("clicks", "clicks_b"):                                # the trained checkpoint: no retraining
        (tmp_path / "b" / name).mkdir(parents=True)
        shutil.copy(build_dir / "clicks" / "clicks.pt", tmp_path / "b" / name / "clicks.pt")
    repo = tmp_path / "repo"
    code, out = _interrupt_when(["engines", "--model", f"{project / 'clicks.toml'},{second}", "--precisions", "fp32",
                                 "--no-tensorrt", "--build-dir", str(tmp_path / "b"), "--repository", str(repo)],
                                "[clicks_b] load model PASSED")
    last = out.strip().splitlines()[-1]
    assert code == 130, out
    assert last.startswith("engines: interrupted (SIGINT) during step '") and "of clicks_b;" in last, last
    assert last.endswith(f"; clicks_fp32 had been published to {repo}, whole, by this command before it; "
                         f"nothing else changed"), last
    assert sorted(p.name for p in repo.iterdir()) == ["clicks_fp32"]
    assert [n for n in _beside(repo) if n != "b"] == ["repo"]   # no lock, no staging, no unfinished generation


def test_commands_take_a_built_models_name_and_records_stay_the_projects(built, build_dir):
    from perf.reports.records import is_project_example
    spec, _, _ = built
    assert load_spec("clicks", build_dir).path == spec.path         # by name, from its build report
    bad = variant_spec(spec.path.parent, 'dtype = "int64"', 'dtype = "float32"', "wrongtype.toml")
    assert main(["engines", "--model", str(bad), "--build-dir", str(build_dir), "--repository",
                 str(build_dir / "unused")]) == 2
    assert BuildRecord.read(build_dir / "clicks" / BuildRecord.FILE).ok is False
    assert load_spec("clicks", build_dir).path == spec.path         # a failed rebuild since: still found
    assert not is_project_example(spec.path) and is_project_example(load_spec("digits").path)


def test_make_perf_on_the_users_spec_path_reports_and_leaves_the_projects_files(built, build_dir, tmp_path):
    """``tck default --model path/to/spec.toml --record`` outside the project: a report, no README/records edit."""
    spec, _, repo = built
    tracked = [ROOT / "README.md", *sorted((ROOT / "records").glob("*.json"))]
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in tracked}
    results = tmp_path / "results"
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", RESULTS_DIR=str(results))
    run = subprocess.run([sys.executable, "-m", "tck", "default", "--model", str(spec.path), "--build-dir",
                          str(build_dir), "--repository", str(repo), "--loads", "1", "--rounds", "1",
                          "--window-ms", "300", "--no-agreement", "--record"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"record: skipped: {spec.path} is not one of the project's examples" in run.stderr
    assert "Traceback" not in run.stderr
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in tracked} == before
    assert sorted((ROOT / "records").glob("*clicks*")) == []
    saved = sorted(p.name for p in results.rglob("*.json"))
    assert any("clicks" in n for n in saved), saved                  # the sweep and report, by the model's name
