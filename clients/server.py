"""The local tritonserver (from nvidia-pytriton, laid out by scripts/setup.sh): the one adapter for it.

``LocalTriton`` owns its server:
- binds to 127.0.0.1 on free ports and gives the server a unique ``--id``; readiness counts only
  when the server answering reports that id (not "something answers on that port");
- closes Triton's administrative APIs (shared memory, model repository, logging, trace) on HTTP and
  gRPC unless asked to open them: only requests carrying the server's admin key pass (header
  ``triton-admin-key``); the project's tools find the key with ``admin_key_for(url)``;
- restricts inference over HTTP to requests carrying the server's infer key (header
  ``triton-infer-key``; ``infer_key_for(url)``): Triton 2.51's JSON parser is killed by one request
  (a body nested 50,000 deep: SIGSEGV; a declared shape of 10^11 elements: SIGABRT), and the
  restriction answers 403 before the body is parsed. gRPC inference (protobuf: no such parser) and
  HTTP health, metadata and statistics stay open;
- gives the Python backend a shared-memory prefix of its own and always removes those segments;
- stops the whole process group (server and backend stubs), also when the server already died; a
  watchdog process does the same if the owner itself is killed (kill -9 included), and the server
  gets SIGTERM from the kernel when its parent dies.
"""

from __future__ import annotations

import functools
import glob
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from clients.errors import ServerError

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent
TOOLS = Path(os.environ.get("TCK_TOOLS", ROOT / ".tools"))
LOG_DIR = Path(os.environ.get("TCK_LOG_DIR", ROOT / "build" / "logs"))
ADMIN_APIS = ("shared-memory", "model-repository", "logging", "trace")
ADMIN_HEADER = "triton-admin-key"
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"   # what Triton's gRPC frontend expects before a restricted key's name
ADMIN_KEY_ENV = "TRITON_ADMIN_KEY"      # the key of a server this process did not start (e.g. a remote one)
INFER_HEADER = "triton-infer-key"       # HTTP inference: only callers holding this key reach the JSON parser
INFER_KEY_ENV = "TRITON_INFER_KEY"
METRICS_ENV = "TCK_TRITON_METRICS"      # the server's metrics URL, in its environment: the CPU models' backlog gauge
KEEP_LOGS = 20
CRASH_SETTLE_S = 0.5                    # after a load, how long a crash it caused takes to show (seen: < 0.1 s)
_ADMIN_KEYS: dict[str, str] = {}        # url -> admin key of the servers this process runs
_INFER_KEYS: dict[str, str] = {}        # http url -> HTTP infer key of the servers this process runs


def _key_for(keys: dict[str, str], env: str, url: str) -> str | None:
    """A server's key: the one of a server this process started at `url`, else $env."""
    return keys.get(url.removeprefix("http://").removeprefix("grpc://")) or os.environ.get(env) or None


def admin_key_for(url: str) -> str | None:
    """The admin key for the server at `url`: one this process started, else $TRITON_ADMIN_KEY."""
    return _key_for(_ADMIN_KEYS, ADMIN_KEY_ENV, url)


def admin_header_name(protocol: str = "http") -> str:
    """The header that carries the admin key: Triton reads ``triton-admin-key`` on HTTP and the
    same key behind its ``triton-grpc-protocol-`` prefix on gRPC."""
    return GRPC_HEADER_PREFIX + ADMIN_HEADER if protocol == "grpc" else ADMIN_HEADER


def admin_headers(url: str, protocol: str = "http") -> dict[str, str]:
    key = admin_key_for(url)
    return {admin_header_name(protocol): key} if key else {}


def infer_key_for(url: str) -> str | None:
    """The HTTP infer key for the server at `url`: one this process started, else $TRITON_INFER_KEY."""
    return _key_for(_INFER_KEYS, INFER_KEY_ENV, url)


def infer_headers(url: str, protocol: str = "http") -> dict[str, str]:
    """What an inference request carries: the infer key on HTTP (gRPC inference is not restricted)."""
    key = infer_key_for(url) if protocol == "http" else None
    return {INFER_HEADER: key} if key else {}


def http_inference_restriction(key: str) -> str:
    """tritonserver's flag value that closes HTTP inference to requests without ``key``."""
    return f"inference:{INFER_HEADER}={key}"


_WATCHDOG = r"""
import glob, os, signal, sys, time
owner, pgid, pattern = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def group_alive():
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
def server_gone():
    # the leader (tritonserver) exited: a zombie until its owner reaps it, or gone
    try:
        with open(f"/proc/{pgid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True
while group_alive():
    try:
        os.kill(owner, 0)
        owner_gone = False
    except ProcessLookupError:
        owner_gone = True
    # the owner died, or the server did: its backend stubs hold the server's client connections
    # open, so a client would wait out its timeout against a dead server; end the group now
    if owner_gone or server_gone():
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        break
    time.sleep(0.2)
time.sleep(0.5)
for f in glob.glob(pattern):
    try:
        os.unlink(f)
    except OSError:
        pass
"""


def _die_with_parent(cpus: frozenset[int] | None = None) -> None:
    """In the child before exec: the kernel sends SIGTERM when the thread that started it exits
    (start LocalTriton from the main thread or a thread that lives as long as the server); and, given
    ``cpus``, the server (its threads and the model stubs it starts inherit it) runs on those cores only."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if cpus:
        os.sched_setaffinity(0, cpus)


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
    """The Python backend stub uses the first python3 on PATH: put this venv's bin first; and no
    bytecode is written into the model folders."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"     # the stubs import model.py: no __pycache__ in published folders
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
    open_admin_apis: bool = False        # True: shared memory, load/unload, logging, trace open to anyone local
    open_http_inference: bool = False    # True: HTTP inference without the infer key (Triton 2.51's parser exposed)
    backend_directory: Path | None = None   # default .tools/backends (the tests use one whose stub runs emulated)
    # True: start with no model, then load each model of the repository on its own; those that cannot
    # load (a broken folder, a failed load, even one that crashes tritonserver) are left out and named
    # in ``refused``, the others are served. False: every model must load, or start() fails.
    load_each: bool = False
    # The cores tritonserver and its model stubs may run on (None: all the caller may use). A measurement
    # whose client would otherwise take its CPU out of the server's share gives each its own cores.
    cpus: frozenset[int] | None = None
    proc: subprocess.Popen | None = field(default=None, init=False)
    refused: dict[str, str] = field(default_factory=dict, init=False)   # model -> why it is not served
    served: list[str] = field(default_factory=list, init=False)
    repaired: list[str] = field(default_factory=list, init=False)      # what the repair of a killed publish did

    def __post_init__(self) -> None:
        self.repository = Path(self.repository).absolute()   # not resolved: a publish swaps the link under it
        self.http_port = self.http_port or free_port()
        self.grpc_port = self.grpc_port or free_port()
        self.metrics_port = self.metrics_port or free_port()
        self.server_id = f"tck-{uuid.uuid4().hex[:12]}"
        self.admin_key = None if self.open_admin_apis else secrets.token_hex(16)
        self.infer_key = None if self.open_http_inference else secrets.token_hex(16)
        self.shm_prefix = f"{self.server_id.replace('-', '_')}_"
        self._watchdog: subprocess.Popen | None = None
        self._stop_lock = threading.Lock()

    @property
    def admin_headers(self) -> dict[str, str]:
        return {ADMIN_HEADER: self.admin_key} if self.admin_key else {}

    @property
    def infer_headers(self) -> dict[str, str]:
        """The header an HTTP inference request needs here (empty when HTTP inference is open)."""
        return {INFER_HEADER: self.infer_key} if self.infer_key else {}

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
            f"--backend-directory={self.backend_directory or TOOLS / 'backends'}", f"--cache-directory={TOOLS / 'caches'}",
            f"--cache-config=local,size={self.cache_bytes}", "--disable-auto-complete-config",
            "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
            f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}", f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false", "--exit-on-error=false", "--log-verbose=0",
            f"--model-control-mode={self.model_control}", f"--id={self.server_id}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
        ]
        if self.admin_key:
            key = f"{','.join(ADMIN_APIS)}:{ADMIN_HEADER}={self.admin_key}"
            cmd += [f"--http-restricted-api={key}", f"--grpc-restricted-protocol={key}"]
        if self.infer_key:
            cmd.append(f"--http-restricted-api={http_inference_restriction(self.infer_key)}")
        cmd += [f"--load-model={m}" for m in self.load]
        return cmd + list(self.extra_args)

    def start(self) -> "LocalTriton":
        if not self.repository.is_dir():
            raise ServerError(f"model repository {self.repository} does not exist; run `make engines` first")
        from build_engines.errors import RepositoryError
        from build_engines.repository import repair_interrupted_publish, validate_model_dir

        self.repaired = repair_interrupted_publish(self.repository)
        if self.load_each:
            self.model_control, self.load = "explicit", ()
            return self._start_each(self._model_names())
        if self.model_control == "none" or self.load:
            names = self.load or self._model_names()
            for n in names:
                try:
                    validate_model_dir(self.repository / n)
                except RepositoryError as e:
                    raise ServerError(f"refusing to start Triton on a broken model: {e}") from e
        return self._launch()

    def _model_names(self) -> list[str]:
        return sorted(p.name for p in self.repository.iterdir() if p.is_dir() and not p.name.startswith("."))

    def _start_each(self, names: list[str]) -> "LocalTriton":
        """Validate each folder, start Triton with none loaded, then load the models one request each
        (plain models first, ensembles after the models they call). A model whose load kills the server
        is named, the server started again, and the rest loaded one at a time."""
        from build_engines.errors import RepositoryError
        from build_engines.repository import validate_model_dir

        order: list[tuple[int, str]] = []
        for n in names:
            try:
                cfg = validate_model_dir(self.repository / n)
            except RepositoryError as e:
                self.refused[n] = f"not loaded, its folder is broken: {e}"
                continue
            order.append((1 if cfg.platform == "ensemble" else 0, n))
        todo = [n for _, n in sorted(order)]
        self._launch()
        careful = False          # after a crash: one model at a time, each given time to take the server down
        while todo or not careful:
            if not todo:         # the fast pass is over: did its last load take the server down after all?
                time.sleep(CRASH_SETTLE_S)
                if not self._died(wait_s=0.5):
                    break
                todo, careful = [n for n in self.served if n not in self.refused], True
                self.served = []
                self._relaunch()
                continue
            name = todo.pop(0)
            why = self._load_one(name)
            if careful and why is None:
                time.sleep(CRASH_SETTLE_S)
            if why is None and self.alive():
                self.served.append(name)
                continue
            if self._died():
                code = self.proc.returncode if self.proc else None
                if careful:        # alone on a fresh server: this load is what killed it
                    self.refused[name] = f"loading it killed tritonserver (exit code {code})" + (f"; {why}" if why else "")
                else:              # a crash is only seen after the fact: find the model that causes it, one by one
                    todo = [name] + todo
                self._relaunch()
                todo = [n for n in self.served + todo if n not in self.refused]
                self.served, careful = [], True
                continue
            self.refused[name] = why or "not ready after its load"
        return self

    def _relaunch(self) -> None:
        self.stop()
        self.server_id, self.log_path = f"tck-{uuid.uuid4().hex[:12]}", None
        self._launch()

    def _died(self, wait_s: float = 5.0) -> bool:
        """Whether the server is dead, waiting a little for a dying one to exit (a crash is not instant)."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not self.alive():
                return True
            try:
                with urllib.request.urlopen(f"http://{self.http_url}/v2/health/live", timeout=1):
                    return False
            except OSError:
                time.sleep(0.1)
        return not self.alive()

    def _load_one(self, name: str) -> str | None:
        """Ask the running server to load one model; None when it is READY, else why not (one line)."""
        req = urllib.request.Request(f"http://{self.http_url}/v2/repository/models/{name}/load", data=b"{}",
                                     method="POST", headers=self.admin_headers)
        try:
            with urllib.request.urlopen(req, timeout=self.ready_timeout_s):
                return None
        except urllib.error.HTTPError as e:
            try:
                text = json.loads(e.read()).get("error", "")
            except (ValueError, AttributeError):
                text = str(e)
            return " ".join(str(text).split("\n\nAt:")[0].split()) or f"HTTP {e.code}"
        except OSError as e:
            return f"the load request failed ({type(e).__name__}: {e})"

    def _launch(self) -> "LocalTriton":
        if self.log_path is None:
            LOG_DIR.mkdir(parents=True, exist_ok=True)
            for old in sorted(LOG_DIR.glob("tritonserver-*.log"), key=os.path.getmtime)[:-KEEP_LOGS]:
                old.unlink(missing_ok=True)      # rotate: the newest KEEP_LOGS stay
            self.log_path = LOG_DIR / f"tritonserver-{self.server_id}.log"
        self._log = open(self.log_path, "wb")
        env = server_env() | {METRICS_ENV: self.metrics_url}   # the CPU models read their backlog there
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True, preexec_fn=functools.partial(_die_with_parent, self.cpus))
        self._watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(self.proc.pid),
                                           self._shm_pattern()], start_new_session=True,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        if self.admin_key:
            _ADMIN_KEYS[self.http_url] = _ADMIN_KEYS[self.grpc_url] = self.admin_key
        if self.infer_key:
            _INFER_KEYS[self.http_url] = self.infer_key
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
                    if r.status == 200 and self._is_ours():
                        return
            except OSError:
                pass
            failed = self._failed_models()
            if failed:
                raise ServerError("models failed to load: " + "; ".join(f"{m}: {why}" for m, why in failed.items())
                                  + f" (log: {self.log_path})")
            time.sleep(0.1)
        raise ServerError(f"tritonserver not ready after {self.ready_timeout_s:.0f} s; log: {self.log_path}\n{self.log_tail()}")

    def _is_ours(self) -> bool:
        """The server on our port reports our --id; another server there is an error, not readiness."""
        with urllib.request.urlopen(f"http://{self.http_url}/v2", timeout=1) as r:
            try:
                name = json.loads(r.read()).get("name")
            except (ValueError, AttributeError):
                name = "not a Triton server"
        if name != self.server_id:
            raise ServerError(f"another server ({name!r}) answers on {self.http_url}, not the one started here "
                              f"({self.server_id}); choose free ports (--http-port/--grpc-port) or stop it")
        return True

    def model_states(self) -> list[dict]:
        """Triton's repository index: name, version, state (READY, UNAVAILABLE, LOADING...) and reason."""
        req = urllib.request.Request(f"http://{self.http_url}/v2/repository/index", data=b"{}", method="POST",
                                     headers=self.admin_headers)
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

    def rss_gib(self, peak: bool = True) -> float:
        """Resident memory of the server and its live backend stubs together (what an instance must hold):
        each process's peak (VmHWM) summed, an upper bound of what was resident at once; ``peak=False``:
        what is resident now (VmRSS)."""
        key = "VmHWM:" if peak else "VmRSS:"
        total_kb = 0
        for d in glob.glob("/proc/[0-9]*"):
            try:
                if self.proc is None or os.getpgid(int(Path(d).name)) != self.proc.pid:
                    continue
                total_kb += next(int(line.split()[1]) for line in Path(d, "status").read_text().splitlines()
                                 if line.startswith(key))
            except (OSError, ValueError, StopIteration):
                continue
        return total_kb / 2**20

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _shm_pattern(self) -> str:
        return f"/dev/shm/{self.shm_prefix}*"

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGINT, then SIGKILL, to the whole group (backend stubs too, also when the server already
        died); then the group's shared-memory segments are removed."""
        with self._stop_lock:                 # stop() may race with itself (a timer thread, then __exit__)
            proc, self.proc = self.proc, None
        if proc is None:
            return
        pgid = proc.pid
        if proc.poll() is None:
            try:
                os.killpg(pgid, signal.SIGINT)
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        try:
            os.killpg(pgid, signal.SIGKILL)      # stubs left behind by a server that died or hung
        except ProcessLookupError:
            pass
        proc.wait()
        for f in glob.glob(self._shm_pattern()):
            try:
                os.unlink(f)
            except OSError:
                pass
        if self._watchdog is not None:
            self._watchdog.kill()
            self._watchdog.wait()
        for url in (self.http_url, self.grpc_url):     # only our own keys: another server may hold this url
            if self.admin_key and _ADMIN_KEYS.get(url) == self.admin_key:
                _ADMIN_KEYS.pop(url)
            if self.infer_key and _INFER_KEYS.get(url) == self.infer_key:
                _INFER_KEYS.pop(url)
        self._log.close()

    def __enter__(self) -> "LocalTriton":
        return self.start()

    def __exit__(self, kind, value, tb) -> None:
        died = kind is not None and issubclass(kind, Exception) and self.proc is not None and not self.alive()
        code = self.proc.returncode if died else None
        tail = self.log_tail(5) if died else ""
        self.stop()
        if died:     # what failed inside the block failed because the server is gone: say that, in one line
            raise ServerError(f"tritonserver {self.server_id} ({self.http_url}) died (exit code {code}) during this "
                              f"command, so it did not finish ({type(value).__name__}); its log: {self.log_path}"
                              + (f"; last line: {tail.splitlines()[-1].strip()}" if tail.strip() else "")) from value


def docker_command(repository: Path, image: str, http_port: int = 8000, grpc_port: int = 8001, metrics_port: int = 8002) -> list[str]:
    """The NGC container on a GPU node (TensorRT and ONNX Runtime backends included)."""
    if not shutil.which("docker"):
        raise ServerError("docker is not installed; on a CPU machine use the local Triton (unset TRITON_IMAGE)")
    key = os.environ.get(ADMIN_KEY_ENV)
    if not key:
        raise ServerError(f"set {ADMIN_KEY_ENV} (e.g. `export {ADMIN_KEY_ENV}=$(openssl rand -hex 16)`): the container's "
                          f"administrative APIs ({', '.join(ADMIN_APIS)}) answer only requests carrying it")
    infer_key = os.environ.get(INFER_KEY_ENV)
    if not infer_key:
        raise ServerError(f"set {INFER_KEY_ENV} (e.g. `export {INFER_KEY_ENV}=$(openssl rand -hex 16)`): HTTP inference "
                          f"answers only requests carrying it (one malformed JSON body kills tritonserver); gRPC "
                          f"inference needs no key")
    restricted = f"{','.join(ADMIN_APIS)}:{ADMIN_HEADER}={key}"
    # published on the loopback only: put a proxy in front to expose it
    return ["docker", "run", "--rm", "--gpus", "all", "-p", f"127.0.0.1:{http_port}:8000",
            "-p", f"127.0.0.1:{grpc_port}:8001", "-p", f"127.0.0.1:{metrics_port}:8002",
            # the folder holding the repository link and its generations: a publish swaps the link under it
            "-v", f"{Path(repository).absolute().parent}:/repository:ro", image, "tritonserver",
            f"--model-repository=/repository/{Path(repository).name}",
            f"--http-restricted-api={restricted}", f"--http-restricted-api={http_inference_restriction(infer_key)}",
            f"--grpc-restricted-protocol={restricted}"]
