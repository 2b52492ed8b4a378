"""The one adapter around the real perf_analyzer binary (installed by `make setup`).

One perf_analyzer run per load point, so a point that fails "Failed to obtain stable measurement"
is retried alone with a wider window. The ``-f`` CSV is parsed by header name into ``PerfPoint``s
with explicit units (microseconds, inferences per second).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import os
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from perf.errors import PerfAnalyzerError, Shed, TargetUnavailable, UnstableMeasurement

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("PERF_ANALYZER", ROOT / ".tools" / "bin" / "perf_analyzer"))
TMP_DIR = ROOT / "build" / "tmp"        # perf_analyzer's CSVs; a killed run's leftovers are swept here


def _tmp_dir() -> Path:
    import shutil
    import time
    TMP_DIR.mkdir(parents=True, exist_ok=True)
    for stale in TMP_DIR.glob("pa.*"):
        if time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)
    return TMP_DIR

# CSV header -> PerfPoint field. Latencies and stage times are microseconds.
COLUMNS = {
    "Inferences/Second": "throughput_infer_per_s",
    "Client Send": "client_send_us",
    "Network+Server Send/Recv": "network_us",
    "Server Queue": "server_queue_us",
    "Server Compute Input": "server_compute_input_us",
    "Server Compute Infer": "server_compute_infer_us",
    "Server Compute Output": "server_compute_output_us",
    "Server Cache Hit": "server_cache_hit_us",
    "Server Cache Miss": "server_cache_miss_us",
    "Client Recv": "client_recv_us",
    "p50 latency": "p50_us",
    "p90 latency": "p90_us",
    "p95 latency": "p95_us",
    "p99 latency": "p99_us",
    "Avg latency": "avg_us",
}
LOAD_COLUMNS = {"Concurrency": "concurrency", "Request Rate": "request_rate"}


@dataclass(frozen=True)
class PerfPoint:
    mode: str                 # "concurrency" | "request_rate"
    load: float               # concurrency, or requests/s
    throughput_infer_per_s: float
    p50_us: float
    p90_us: float
    p95_us: float
    p99_us: float
    avg_us: float | None = None
    client_send_us: float | None = None
    network_us: float | None = None
    server_queue_us: float | None = None
    server_compute_input_us: float | None = None
    server_compute_infer_us: float | None = None
    server_compute_output_us: float | None = None
    server_cache_hit_us: float | None = None
    server_cache_miss_us: float | None = None
    client_recv_us: float | None = None
    batch_size: int = 1

    @property
    def requests_per_s(self) -> float:
        return self.throughput_infer_per_s / self.batch_size

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PerfSettings:
    protocol: str = "grpc"
    batch_size: int = 1
    measurement_interval_ms: int = 2000
    stability_pct: float = 25.0      # -s: wide on a shared 2-core machine, measured to be reliable
    max_trials: int = 10             # -r
    shared_memory: str = "none"      # none | system
    distribution: str = "constant"   # request-rate mode: constant | poisson
    timeout_s: float = 180.0
    retries: int = 2                 # extra tries after "Failed to obtain stable measurement", window x2 each
    input_data: str | None = None    # a perf_analyzer JSON data file; default random
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.protocol not in ("grpc", "http"):
            raise PerfAnalyzerError(f"protocol {self.protocol!r}: use grpc or http")
        if self.shared_memory not in ("none", "system"):
            raise PerfAnalyzerError(f"shared_memory {self.shared_memory!r}: use none or system (cuda needs a GPU)")
        if self.distribution not in ("constant", "poisson"):
            raise PerfAnalyzerError(f"distribution {self.distribution!r}: use constant or poisson")


def parse_csv(text: str, batch_size: int = 1) -> list[PerfPoint]:
    """Parse perf_analyzer's ``-f`` CSV by header name (column order differs between modes and versions)."""
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise PerfAnalyzerError("perf_analyzer wrote an empty CSV")
    header = rows[0].keys()
    load_col = next((c for c in LOAD_COLUMNS if c in header), None)
    missing = [c for c in ("Inferences/Second", "p50 latency", "p99 latency") if c not in header]
    if load_col is None or missing:
        raise PerfAnalyzerError(f"perf_analyzer CSV lacks columns {missing or ['Concurrency/Request Rate']}: {list(header)}")
    points = []
    for row in rows:
        vals = {}
        for col, fld in COLUMNS.items():
            raw = (row.get(col) or "").strip()
            vals[fld] = float(raw) if raw else None
        points.append(PerfPoint(mode=LOAD_COLUMNS[load_col], load=float(row[load_col]), batch_size=batch_size, **vals))
    return points


def check_target(url: str, model: str, protocol: str = "grpc", timeout_s: float = 5.0) -> dict:
    """Fail fast, before any load: is the server up and the model ready? Returns the model config."""
    from clients import ClientError, TritonClient
    try:
        with TritonClient(url, model, protocol, timeout_s) as c:
            c.metadata()
            return c.model_config()
    except ClientError as e:
        raise TargetUnavailable(str(e)) from e


def command(url: str, model: str, mode: str, load: float, s: PerfSettings, csv_path: Path, window_ms: int) -> list[str]:
    if not BINARY.exists():
        raise PerfAnalyzerError(f"perf_analyzer not found at {BINARY}; run `make setup`")
    cmd = [str(BINARY), "-m", model, "-u", url, "-i", s.protocol, "-b", str(s.batch_size),
           "--measurement-interval", str(window_ms), "-s", str(s.stability_pct), "-r", str(s.max_trials),
           "-f", str(csv_path), "--verbose-csv"]
    if mode == "concurrency":
        cmd += ["--concurrency-range", f"{int(load)}:{int(load)}"]
    else:
        cmd += ["--request-rate-range", f"{load}:{load}", "--request-distribution", s.distribution, "-a"]
    if s.shared_memory != "none":
        from clients.server import ADMIN_HEADER, admin_key_for
        key = admin_key_for(url)
        if key and s.protocol != "http":
            raise PerfAnalyzerError("shared memory on a server whose admin APIs are keyed: perf_analyzer sends the key "
                                    "only over HTTP; use --protocol http (or a server started with --open-admin-apis)")
        cmd += ["--shared-memory", s.shared_memory] + (["-H", f"{ADMIN_HEADER}:{key}"] if key else [])
    if s.protocol == "http":
        from clients.server import INFER_HEADER, infer_key_for
        key = infer_key_for(url)
        cmd += ["-H", f"{INFER_HEADER}:{key}"] if key else []     # HTTP inference is keyed (Triton 2.51's parser)
    if s.input_data:
        cmd += ["--input-data", s.input_data]
    return cmd + list(s.extra_args)


def outcome(out: str, returncode: int, csv_path: Path, url: str, model: str, mode: str, load: float,
            batch_size: int) -> PerfPoint | None:
    """One finished run: its point, None where it found no stable measurement (to retry), else the error
    (Shed: the queue policy rejected requests; TargetUnavailable; PerfAnalyzerError)."""
    if returncode == 0 and csv_path.exists():
        return parse_csv(csv_path.read_text(), batch_size)[0]
    last = "\n".join(out.splitlines()[-6:])
    if "Exceeds maximum queue size" in out or "Request timeout expired" in out:
        raise Shed(f"the queue policy of {model} rejected requests at {mode}={load} ({url}): load above "
                   "what it accepts is shed, not served")
    if "stable measurement" in out:
        return None
    if "unknown model" in out or "failed to connect" in out.lower() or "not found" in out:
        raise TargetUnavailable(f"perf_analyzer cannot reach {model!r} at {url}: {last}")
    raise PerfAnalyzerError(f"perf_analyzer exited {returncode} at {mode}={load} ({url} {model}):\n{last}")


@dataclass(frozen=True)
class RateLoad:
    """One model of a concurrent run: its requests/s and its own input data (None: perf_analyzer's random)."""

    model: str
    rate: float
    input_data: str | None


def measure_together(url: str, loads: Sequence[RateLoad], s: PerfSettings) -> list[PerfPoint | PerfAnalyzerError]:
    """One request-rate run per model at its rate, all started at one instant against one server and
    run for the same windows (``s.stability_pct`` 100 and 3 trials: no run stops early or late to
    stabilise while the others go on). Each entry: its point, or the error its run ended with (Shed
    where its queue policy rejected requests); an unreachable model raises at once."""
    fixed = dataclasses.replace(s, stability_pct=100.0, max_trials=3)
    with tempfile.TemporaryDirectory(prefix="pa.", dir=_tmp_dir()) as tmp:
        runs = []
        for i, job in enumerate(loads):
            csv_path = Path(tmp) / f"out{i}.csv"
            own = dataclasses.replace(fixed, input_data=job.input_data)
            cmd = command(url, job.model, "request_rate", job.rate, own, csv_path, own.measurement_interval_ms)
            runs.append((job.model, job.rate, csv_path, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                                 text=True)))
        results: list[PerfPoint | PerfAnalyzerError] = []
        try:
            for model, rate, csv_path, proc in runs:
                try:
                    out, _ = proc.communicate(timeout=fixed.timeout_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.communicate()
                    results.append(PerfAnalyzerError(f"perf_analyzer ran past {fixed.timeout_s:g} s at "
                                                     f"request_rate={rate:g} on {url} {model}"))
                    continue
                try:
                    point = outcome(out.strip(), proc.returncode, csv_path, url, model, "request_rate", rate,
                                    fixed.batch_size)
                except PerfAnalyzerError as e:         # TargetUnavailable (not one of these) goes up at once
                    results.append(e)
                    continue
                results.append(point if point is not None else UnstableMeasurement(
                    f"no measurement of {model} at request_rate={rate:g}"))
        finally:
            for *_, proc in runs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    return results


def measure(url: str, model: str, mode: str, load: float, s: PerfSettings) -> PerfPoint:
    """One load point; retries unstable measurements with a doubled window."""
    window = s.measurement_interval_ms
    last = ""
    for attempt in range(s.retries + 1):
        with tempfile.TemporaryDirectory(prefix="pa.", dir=_tmp_dir()) as tmp:
            csv_path = Path(tmp) / "out.csv"
            cmd = command(url, model, mode, load, s, csv_path, window)
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=s.timeout_s)
            except subprocess.TimeoutExpired as e:
                raise PerfAnalyzerError(f"perf_analyzer ran past {s.timeout_s:g} s at {mode}={load} on {url} {model}") from e
            out = (r.stdout + r.stderr).strip()
            point = outcome(out, r.returncode, csv_path, url, model, mode, load, s.batch_size)
            if point is not None:
                return point
            last = "\n".join(out.splitlines()[-6:])
        if attempt < s.retries:
            log.warning("unstable measurement at %s=%s (window %d ms); retrying with %d ms", mode, load, window, window * 2)
        window *= 2
    raise UnstableMeasurement(f"no stable measurement at {mode}={load} after {s.retries + 1} tries "
                              f"(window up to {window // 2} ms, -s {s.stability_pct}); last output:\n{last}")


def sweep(url: str, model: str, mode: str, loads: Sequence[float], settings: PerfSettings | None = None,
          progress=None, checked: bool = False) -> list[PerfPoint]:
    """A concurrency or request-rate sweep. The target is checked first (unless the caller just did:
    ``checked``); nothing is returned on failure."""
    s = settings or PerfSettings()
    if mode not in ("concurrency", "request_rate"):
        raise PerfAnalyzerError(f"mode {mode!r}: use concurrency or request_rate")
    if not checked:
        check_target(url, model, s.protocol)
    points = []
    for load in loads:
        points.append(measure(url, model, mode, load, s))
        if progress:
            progress(points[-1])
    return points
