"""The CLI and the README's commands, run for real."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def tck(*args, **kw):
    return subprocess.run([sys.executable, "-m", "tck", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, **kw)


def test_make_help_lists_the_readme_targets():
    out = subprocess.run(["make", "help"], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    for target in ("setup", "demo", "engines", "serve", "test", "bench", "perf", "report", "deploy-manifests"):
        assert f"make {target} " in out
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme


def test_infer_command_against_the_real_server(triton, tmp_path, digits_spec):
    x, labels = digits_spec.resolve("evaluation")()
    np.savez(tmp_path / "in.npz", image=x["image"][:3])
    r = tck("infer", "digits_fp32", "--input", str(tmp_path / "in.npz"), "--url", triton.http_url)
    assert r.returncode != 0 and "needs the server's infer key and no key was sent" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and "TRITON_INFER_KEY" in r.stderr and "gRPC" in r.stderr
    import os
    r = tck("infer", "digits_fp32", "--input", str(tmp_path / "in.npz"), "--url", triton.http_url,
            env=dict(os.environ, TRITON_INFER_KEY=triton.infer_key))        # what `make serve` prints
    assert r.returncode == 0, r.stderr
    logits = np.array(json.loads(r.stdout)["logits"])
    assert logits.shape == (3, 10) and (logits.argmax(1) == labels[:3]).all()


def test_cli_user_errors_are_one_line_and_exit_2(tmp_path):
    r = tck("infer", "digits_fp32", "--input", str(tmp_path / "x.json"), "--url", "127.0.0.1:1")
    assert r.returncode != 0
    r = tck("engines", "--model", "nope")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "nope" in r.stderr and "Traceback" not in r.stderr


def test_serve_stops_its_server_on_sigterm(digits_build):
    """`make serve` killed with SIGTERM (timeout, kill, an orchestrator) must not leave tritonserver running."""
    import signal
    import time
    import urllib.request
    from clients.server import free_port
    _, repo = digits_build
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tck", "serve", "--repository", str(repo),
                             "--http-port", str(port), "--grpc-port", str(free_port()), "--metrics-port", str(free_port())],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        assert f"HTTP 127.0.0.1:{port}" in line, line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=5) as r:
            assert r.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.5)
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/live", timeout=2)
        alive = True
    except OSError:
        alive = False
    assert not alive, "tritonserver outlived `serve`"
