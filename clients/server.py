"""The local tritonserver (from nvidia-pytriton, laid out by scripts/setup.sh): the one adapter for it.

``LocalTriton`` picks free ports, binds to 127.0.0.1, waits for readiness and always stops the
server (SIGINT, then SIGKILL) even when the body raised.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from clients.errors import ServerError

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent
TOOLS = Path(os.environ.get("TCK_TOOLS", ROOT / ".tools"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tritonserver_binary() -> Path:
    b = TOOLS / "bin" / "tritonserver"
    if not b.exists():
        raise ServerError(f"tritonserver not found at {b}; run `make setup` first")
    return b


def server_env() -> dict[str, str]:
    """The Python backend stub uses the first python3 on PATH: put this venv's bin first."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)
    return env


@dataclass
class LocalTriton:
    repository: Path
    model_control: str = "none"          # "none": load all at start; "explicit": via the repository API
    load: Sequence[str] = ()
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    cache_bytes: int = 64 << 20
    ready_timeout_s: float = 120.0
    log_path: Path | None = None
    extra_args: Sequence[str] = ()
    proc: subprocess.Popen | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.repository = Path(self.repository).resolve()
        self.http_port = self.http_port or free_port()
        self.grpc_port = self.grpc_port or free_port()
        self.metrics_port = self.metrics_port or free_port()

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        cmd = [
            str(tritonserver_binary()), f"--model-repository={self.repository}",
            f"--backend-directory={TOOLS / 'backends'}", f"--cache-directory={TOOLS / 'caches'}",
            f"--cache-config=local,size={self.cache_bytes}", "--disable-auto-complete-config",
            "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
            f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}", f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false", "--exit-on-error=false", "--log-verbose=0",
            f"--model-control-mode={self.model_control}",
        ]
        cmd += [f"--load-model={m}" for m in self.load]
        return cmd + list(self.extra_args)

    def start(self) -> "LocalTriton":
        if not self.repository.is_dir():
            raise ServerError(f"model repository {self.repository} does not exist; run `make engines` first")
        if self.model_control == "none" or self.load:
            from build_engines.repository import validate_model_dir
            from build_engines.errors import RepositoryError

            names = self.load or [p.name for p in self.repository.iterdir() if p.is_dir() and not p.name.startswith(".")]
            for n in names:
                try:
                    validate_model_dir(self.repository / n)
                except RepositoryError as e:
                    raise ServerError(f"refusing to start Triton on a broken model: {e}") from e
        if self.log_path is None:
            self.log_path = Path(tempfile.mkstemp(prefix="tritonserver-", suffix=".log")[1])
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT, env=server_env(),
                                     start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        log.info("tritonserver ready: http %s grpc %s metrics %s", self.http_url, self.grpc_url, self.metrics_url)
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"tritonserver exited with code {self.proc.returncode}; log: {self.log_path}\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            failed = self._failed_models()
            if failed:
                raise ServerError("models failed to load: " + "; ".join(f"{m}: {why}" for m, why in failed.items())
                                  + f" (log: {self.log_path})")
            time.sleep(0.1)
        raise ServerError(f"tritonserver not ready after {self.ready_timeout_s:.0f} s; log: {self.log_path}\n{self.log_tail()}")

    def model_states(self) -> list[dict]:
        """Triton's repository index: name, version, state (READY, UNAVAILABLE, LOADING...) and reason."""
        req = urllib.request.Request(f"http://{self.http_url}/v2/repository/index", data=b"{}", method="POST")
        with urllib.request.urlopen(req, timeout=2) as r:
            return json.loads(r.read())

    def _failed_models(self) -> dict[str, str]:
        """Once no model is still loading, the ones left UNAVAILABLE with a reason (explicit mode: only those asked for)."""
        try:
            states = self.model_states()
        except (OSError, ValueError):
            return {}
        if self.model_control == "explicit":
            states = [s for s in states if s.get("name") in self.load]
        if not states or any(s.get("state") not in ("READY", "UNAVAILABLE") for s in states):
            return {}
        return {s["name"]: s.get("reason", "") for s in states if s.get("state") == "UNAVAILABLE" and s.get("reason")}

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        self._log.close()
        self.proc = None

    def __enter__(self) -> "LocalTriton":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def docker_command(repository: Path, image: str, http_port: int = 8000, grpc_port: int = 8001, metrics_port: int = 8002) -> list[str]:
    """The NGC container on a GPU node (TensorRT and ONNX Runtime backends included)."""
    if not shutil.which("docker"):
        raise ServerError("docker is not installed; on a CPU machine use the local Triton (unset TRITON_IMAGE)")
    return ["docker", "run", "--rm", "--gpus", "all", "-p", f"{http_port}:8000", "-p", f"{grpc_port}:8001",
            "-p", f"{metrics_port}:8002", "-v", f"{Path(repository).resolve()}:/models", image,
            "tritonserver", "--model-repository=/models"]
