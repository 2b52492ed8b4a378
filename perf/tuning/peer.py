"""Model Analyzer, the peer the tuner is judged against: its brute search on the same model, the same
server flags and the same SLA, on a Triton it starts itself (local launch mode).

Installed by `make setup` in a venv of its own (``.tools/model-analyzer``, pinned in
``requirements-model-analyzer.lock`` with the tritonclient whose perf_analyzer runs here). It starts
from what a user hands it: each variant's published config with batching off and one instance (the
tuner's own starting point), and searches instance counts up to the cores and max_batch_size up to
the spec's, with ``dynamic_batching {}`` (its brute mode). Its pick is its own ranking (the first
config of its report line) of the variant whose pick served the most within the SLA: it ranks the
configs of one model, the user picks between models.
"""

from __future__ import annotations

import csv
import json
import io
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, ClassVar, NamedTuple, Sequence

from build_engines.records import Record
from build_engines.repository import config_text, parse_config, serving_from_config
from build_engines.spec import ModelSpec, ServingConfig
from clients.server import TOOLS, free_port, server_env
from perf.errors import PerfError, SlaUnmet
from perf.measure.frontier import Sla
from perf.measure.sweeps import candidate_config

MODEL_ANALYZER = TOOLS / "bin" / "model-analyzer"
PERF_ANALYZER = TOOLS / "bin" / "perf_analyzer"
VERSION = "1.58.0"
SEARCH = "brute"
TIMEOUT_S = 3600.0
PERCENTILES = ("p90", "p95", "p99")      # its perf_latency_pNN metrics
CONCURRENT_WINDOW_MS = 3000              # its concurrent mode's perf_analyzer windows (time windows)


class PeerError(PerfError):
    """Model Analyzer is missing, failed, or measured nothing that meets the SLA."""


@dataclass(frozen=True)
class PeerConfig:
    """One config Model Analyzer measured: its best point within the SLA."""

    name: str                  # Model Analyzer's name for it (digits_fp32_config_3)
    model: str                 # the published model it is a config of (digits_fp32)
    serving: ServingConfig
    throughput: float          # inferences/s at its best measured concurrency within the SLA
    concurrency: int
    latency_ms: float          # the SLA percentile there

    @property
    def variant(self) -> str:
        return self.model.rsplit("_", 1)[-1]

    def label(self) -> str:
        from perf.tuning.tuner import Candidate
        return Candidate(self.variant, self.serving).label()


@dataclass
class PeerRun:
    """What one Model Analyzer search measured and picked."""

    tool: str
    search: str
    space: str                 # what it searched
    seconds: float             # its wall time, server starts included (as a user waits for it)
    configs_measured: int      # model configs it profiled (illegal ones it skipped not counted)
    measurements: int          # perf_analyzer runs it made
    pick: PeerConfig
    ranked: list[PeerConfig]   # the configs in its report (its top ones per model), best first
    variants: list[str] = field(default_factory=list)   # the published variants it searched (one model each)
    stopped: str = ""          # why its search was stopped before it ended (a loop, the timeout); "": it ended


def available() -> bool:
    return MODEL_ANALYZER.exists()


def check(sla: Sla) -> None:
    """Before anything is measured: Model Analyzer is installed and has the SLA's percentile as a metric."""
    if not available():
        raise PeerError(f"Model Analyzer not found at {MODEL_ANALYZER}; run `make setup`")
    if sla.percentile not in PERCENTILES:
        raise PeerError(f"Model Analyzer has no {sla.percentile} latency metric: use --percentile "
                        f"{' or '.join(PERCENTILES)}")


def start_repository(repository: Path, spec: ModelSpec, variants: Sequence[str], dest: Path) -> Path:
    """Model Analyzer's input: each variant's published config with batching off and one instance (the
    tuner's starting point), its version folders linked to the published ones (it copies them)."""
    base = ServingConfig.from_spec(spec, dynamic_batching=False, instances=1, threads_per_instance=1,
                                   response_cache=False)
    dest.mkdir(parents=True, exist_ok=True)
    for v in variants:
        model = f"{spec.name}_{v}"
        src = Path(repository) / model
        out = dest / model
        out.mkdir(exist_ok=True)
        (out / "config.pbtxt").write_text(config_text(candidate_config(repository, model, base)))
        for ver in (p for p in src.iterdir() if p.is_dir() and p.name.isdigit()):
            link = out / ver.name
            if not link.exists():
                link.symlink_to(ver.resolve(), target_is_directory=True)
    return dest


def server_flags() -> dict[str, str]:
    """The flags our LocalTriton starts tritonserver with, as Model Analyzer passes them (``--key=value``;
    it sets the repository, the ports and explicit model control itself). ``strict-model-config=true``
    is ``--disable-auto-complete-config``, which takes no value."""
    return {"backend-directory": str(TOOLS / "backends"), "cache-directory": str(TOOLS / "caches"),
            "cache-config": f"local,size={64 << 20}", "strict-model-config": "true",
            "allow-gpu-metrics": "false", "exit-on-error": "false", "log-verbose": "0",
            "http-address": "127.0.0.1", "grpc-address": "127.0.0.1", "metrics-address": "127.0.0.1"}


def profile_config(models: Sequence[str], repository: Path, work: Path, sla: Sla, max_instances: int,
                   max_batch_size: int, max_concurrency: int, input_data: str | None) -> dict:
    """Model Analyzer's `profile` config (YAML; JSON is YAML)."""
    env = server_env()
    http, grpc, metrics = free_port(), free_port(), free_port()
    limit = {f"perf_latency_{sla.percentile}": {"max": sla.ms}}
    return {
        "model_repository": str(repository), "output_model_repository_path": str(work / "output"),
        "override_output_model_repository": True, "export_path": str(work / "export"),
        "checkpoint_directory": str(work / "checkpoints"),
        "triton_launch_mode": "local", "triton_server_path": str(TOOLS / "bin" / "tritonserver"),
        "triton_server_flags": server_flags(),
        "triton_server_environment": {"PATH": env["PATH"], "PYTHONDONTWRITEBYTECODE": "1"},
        "triton_output_path": str(work / "tritonserver.log"),
        "triton_http_endpoint": f"127.0.0.1:{http}", "triton_grpc_endpoint": f"127.0.0.1:{grpc}",
        "triton_metrics_url": f"http://127.0.0.1:{metrics}/metrics",
        "perf_analyzer_path": str(PERF_ANALYZER), "client_protocol": "grpc",
        "perf_analyzer_flags": {"input-data": str(Path(input_data).absolute())} if input_data else {},
        "run_config_search_mode": SEARCH, "run_config_search_max_instance_count": max_instances,
        "run_config_search_max_model_batch_size": max_batch_size,
        "run_config_search_max_concurrency": max_concurrency,
        "skip_detailed_reports": True,
        # its CSV holds p99 alone unless told; the SLA's percentile is what its pick is read back by
        "inference_output_fields": ["model_name", "batch_size", "concurrency", "model_config_path", "instance_group",
                                    "max_batch_size", "satisfies_constraints", "perf_throughput",
                                    f"perf_latency_{sla.percentile}"],
        "profile_models": {m: {"cpu_only": True, "constraints": limit, "objectives": ["perf_throughput"]}
                           for m in models},
    }


@dataclass(frozen=True)
class Profiled:
    """One model of a concurrent profile: the published model, its spec, its own SLA and inputs."""

    model: str
    spec: ModelSpec
    sla: Sla
    input_data: str | None


def concurrent_config(models: Sequence[Profiled], repository: Path, work: Path, max_instances: int,
                      max_concurrency: int) -> dict:
    """Model Analyzer's `profile` config for its concurrent mode (all models loaded and measured at once,
    its quick search): each model with its own SLA as its constraint and its own input data."""
    first = models[0]
    cfg = profile_config([m.model for m in models], repository, work, first.sla, max_instances,
                         max(m.spec.serving.max_batch_size for m in models), max_concurrency, None)
    cfg["run_config_profile_models_concurrently_enable"] = True
    env = cfg["triton_server_environment"]          # its perf_analyzers get this PATH too: mpiexec is in .tools/bin
    env["PATH"] = f"{TOOLS / 'bin'}:{env['PATH']}"
    cfg["run_config_search_mode"] = "quick"
    fields = [f for f in cfg["inference_output_fields"] if not f.startswith("perf_latency_")]
    cfg["inference_output_fields"] = fields + [f"perf_latency_{p}" for p in sorted({m.sla.percentile for m in models})]
    # time windows: its default count windows grow (and restart every perf_analyzer) until the slowest model
    # of the set has sent enough requests, which a light model beside a heavy one on two cores never does
    # and our perf_analyzer's stability bar (analyzer.PerfSettings: 25 %): at its 10 % two models sharing two cores
    # never stabilise together (measured: 10 windows at concurrency 8 each, digits beside signals, no stable one)
    from perf.measure.analyzer import PerfSettings
    windows = {"measurement-mode": "time_windows", "measurement-interval": str(CONCURRENT_WINDOW_MS),
               "stability-percentage": str(PerfSettings().stability_pct)}
    cfg["perf_analyzer_timeout"] = 300
    cfg["perf_analyzer_max_auto_adjusts"] = 3
    cfg["profile_models"] = {
        m.model: {"cpu_only": True, "constraints": {f"perf_latency_{m.sla.percentile}": {"max": m.sla.ms}},
                  "objectives": ["perf_throughput"],
                  "perf_analyzer_flags": windows | ({"input-data": str(Path(m.input_data).absolute())}
                                                   if m.input_data else {})}
        for m in models}
    return cfg


def run(repository: Path, spec: ModelSpec, variants: Sequence[str], sla: Sla, work: Path, max_instances: int,
        max_concurrency: int = 64, input_data: str | None = None,
        progress: Callable[[str], None] = print) -> PeerRun:
    """Model Analyzer's brute search over ``variants`` of ``spec`` (a fresh ``work`` folder: no checkpoint
    from an earlier run is reused)."""
    check(sla)
    import shutil
    shutil.rmtree(work, ignore_errors=True)
    models = [f"{spec.name}_{v}" for v in variants]
    start = start_repository(repository, spec, variants, work / "input")
    cfg = profile_config(models, start, work, sla, max_instances, spec.serving.max_batch_size, max_concurrency,
                         input_data)
    (work / "profile.yaml").write_text(json.dumps(cfg, indent=1))
    progress(f"Model Analyzer {VERSION} ({SEARCH}): {', '.join(models)}, {sla}, up to {max_instances} instances, "
             f"max_batch_size {spec.serving.max_batch_size}, concurrency {max_concurrency}")
    seconds = _profile(work, progress)
    return collect(work, spec, variants, sla, seconds, max_instances, max_concurrency)


def run_concurrent(repository: Path, models: Sequence[Profiled], work: Path, max_instances: int,
                   max_concurrency: int = 64, progress: Callable[[str], None] = print) -> float:
    """Model Analyzer's concurrent mode on ``models`` (a fresh ``work`` folder); its wall time in s."""
    for m in models:
        check(m.sla)
    if not (TOOLS / "bin" / "mpiexec").exists():
        raise PeerError(f"no mpiexec at {TOOLS / 'bin' / 'mpiexec'}: Model Analyzer's concurrent mode needs Open MPI; "
                        "`make setup` installs it where apt-get download can fetch it (or install openmpi-bin)")
    import shutil
    shutil.rmtree(work, ignore_errors=True)
    for m in models:
        start_repository(repository, m.spec, [m.model.rsplit("_", 1)[-1]], work / "input")
    cfg = concurrent_config(models, work / "input", work, max_instances, max_concurrency)
    (work / "profile.yaml").write_text(json.dumps(cfg, indent=1))
    progress(f"Model Analyzer {VERSION} (concurrent, quick): {', '.join(m.model for m in models)}; up to "
             f"{max_instances} instances each, concurrency {max_concurrency}")
    return _profile(work, progress)


MARK = "TCK_PEER_RUN"      # in Model Analyzer's environment: every process it starts inherits it (see _marked)


def _env(mark: str) -> dict[str, str]:
    """Model Analyzer's environment: ours, with .tools/bin first (its concurrent mode runs `mpiexec`), and
    ``mark`` as MARK (its tritonserver and perf_analyzer copy its environment: server_local.py,
    perf_analyzer.py)."""
    env = dict(os.environ)
    env["PATH"] = f"{TOOLS / 'bin'}:{env.get('PATH', '')}"
    env[MARK] = mark
    return env


# Model Analyzer's quick search can re-propose measured configs without end (a concurrent run on the
# house fleet, 2026-12-07: 19 combinations measured in 23 min, then 65,518 "Skipping profile" lines in
# 13 s of log and nothing more). This many skips with no new measurement between them is that loop.
LOOP_SKIPS = 2000
SKIP_LINE = "Existing measurement found for run config. Skipping profile"
STOPPED_FILE = "stopped"      # in its folder: its search was stopped (why) and its tables written from its checkpoint
# Model Analyzer's own tables and summary from its checkpoint, its search skipped: run by its own Python
# (its profile command with the profiling step left out; every number is its checkpoint's).
SUMMARIZE = """import sys
from model_analyzer import analyzer, entrypoint
analyzer.Analyzer._profile_models = lambda self: None
analyzer.Analyzer._get_server_only_metrics = lambda self, client, gpus: None
sys.argv = ["model-analyzer", "profile", "-f", sys.argv[1]]
entrypoint.main()
"""


def _skips_since_measuring(log: Path, offset: int, skips: int) -> tuple[int, int]:
    """Read the log from ``offset``: the new offset and the "Skipping profile" lines since its last
    "Profiling" line (``skips`` carried over from the last read)."""
    with open(log, "rb") as f:
        f.seek(offset)
        chunk = f.read()
    chunk = chunk[:chunk.rfind(b"\n") + 1]          # whole lines only: the rest is read next time
    for line in chunk.decode(errors="replace").splitlines():
        if "Profiling " in line:
            skips = 0
        elif SKIP_LINE in line:
            skips += 1
    return offset + len(chunk), skips


class Proc(NamedTuple):
    """A process as the sweeps find it: its pid and its start time (clock ticks since boot), so a later
    process given the same pid is never signalled."""

    pid: int
    started: str

    @property
    def alive(self) -> bool:
        """It has not exited (a zombie has: where init does not reap, as in some containers, it stays
        until its parent goes)."""
        fields = _stat(self.pid)
        return fields is not None and fields[0] != "Z" and fields[STARTTIME] == self.started


def _stop(proc: subprocess.Popen, mark: str) -> None:
    """SIGINT three times (Model Analyzer saves its checkpoint and exits on the third), then kill; then
    whatever it had started and left running (its tritonserver and perf_analyzer run in sessions of their
    own, so a kill of Model Analyzer alone left its server holding the cores and ports): those noted below
    it before each signal, and those carrying ``mark`` (one started after the last SIGINT too)."""
    left: set[Proc] = set()
    for _ in range(3):
        if proc.poll() is None:
            left |= _descendants(proc.pid)      # again each time: it starts a server and a perf_analyzer per step
            proc.send_signal(signal.SIGINT)
            time.sleep(1.0)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        left |= _descendants(proc.pid)
        proc.kill()
        proc.wait()
    _end(left | _marked(mark))


def _end(procs: set[Proc], grace_s: float = 5.0) -> int:
    """SIGTERM each of ``procs`` still alive, so a tritonserver can unmap its shared memory; SIGKILL those
    still alive ``grace_s`` later. How many were."""
    alive = [p for p in procs if p.alive]
    for p in alive:
        _signal(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(p.alive for p in alive):
        time.sleep(0.1)
    for p in alive:
        if p.alive:
            _signal(p.pid, signal.SIGKILL)
    return len(alive)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _marked(mark: str) -> set[Proc]:
    """Every process but this one whose environment carries ``mark`` as MARK."""
    needle = f"{MARK}={mark}".encode()
    out = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            found = needle in (d / "environ").read_bytes().split(b"\0")
        except OSError:                          # gone, or not ours to read
            continue
        if found and (started := _started(int(d.name))):
            out.add(Proc(int(d.name), started))
    return out


STARTTIME = 19       # _stat's index of a process's start time (field 22 of /proc/<pid>/stat, ticks since boot)


def _stat(pid: int | str) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command name (state, ppid, ...), None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def _started(pid: int) -> str | None:
    """When ``pid`` started (clock ticks since boot), None if it is gone."""
    fields = _stat(pid)
    return fields[STARTTIME] if fields else None


def _descendants(pid: int) -> set[Proc]:
    """Every process below ``pid`` now, new sessions included."""
    children: dict[int, list[Proc]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (fields := _stat(d.name)):     # its start time from the same read as its parent
            children.setdefault(int(fields[1]), []).append(Proc(int(d.name), fields[STARTTIME]))
    out, todo = set(), list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.add(p)
        todo += children.get(p.pid, [])
    return out


def _summarize(work: Path, log: Path, why: str, mark: str) -> None:
    """Its tables and summary from its checkpoint (the search stopped: ``why``), appended to its log;
    anything it left running (``mark``) is stopped."""
    (work / "summarize.py").write_text(SUMMARIZE)
    cfg = json.loads((work / "profile.yaml").read_text())
    cfg["output_model_repository_path"] = str(work / "summarize-output")   # it empties that folder first:
    (work / "summarize.yaml").write_text(json.dumps(cfg, indent=1))       # the configs it measured stay
    with open(log, "a") as out:
        try:
            r = subprocess.run([str(MODEL_ANALYZER.resolve().parent / "python"), str(work / "summarize.py"),
                                str(work / "summarize.yaml")], stdout=out, stderr=subprocess.STDOUT, timeout=600,
                               cwd=work, env=_env(mark))
        except subprocess.TimeoutExpired as e:
            raise PeerError(f"Model Analyzer's search {why} and was stopped; writing its tables from its checkpoint "
                            f"ran past 600 s (log {log})") from e
        finally:
            _end(_marked(mark))
    if r.returncode != 0:
        raise PeerError(f"Model Analyzer's search {why} and was stopped; writing its tables from its checkpoint "
                        f"exited {r.returncode} (log {log})")


def _profile(work: Path, progress: Callable[[str], None], poll_s: float = 2.0, timeout_s: float = TIMEOUT_S) -> float:
    """Its profile command on ``work``/profile.yaml; its wall time in s. A search that loops (LOOP_SKIPS)
    or runs past ``timeout_s`` is stopped and its results written from its checkpoint (what it measured
    is kept; why, said and kept in STOPPED_FILE, written first so that a failed summary keeps it too).
    Model Analyzer is stopped whatever ends the wait (Ctrl-C included), as subprocess.run did, and
    whatever it started and left running is stopped however it ended (see _marked)."""
    t0 = time.perf_counter()
    log = work / "model-analyzer.log"
    mark = f"{os.getpid()}-{time.time_ns()}"
    offset, skips, timed_out = 0, 0, False
    with open(log, "w") as out:
        proc = subprocess.Popen([str(MODEL_ANALYZER), "profile", "-f", str(work / "profile.yaml")], stdout=out,
                                stderr=subprocess.STDOUT, cwd=work, env=_env(mark))
        try:
            while proc.poll() is None and skips < LOOP_SKIPS and not timed_out:
                time.sleep(poll_s)
                offset, skips = _skips_since_measuring(log, offset, skips)
                timed_out = time.perf_counter() - t0 > timeout_s
        finally:
            stopped_it = proc.poll() is None      # else it ended on its own, whatever the last poll counted
            if stopped_it:
                _stop(proc, mark)
            elif left := _end(_marked(mark)):
                progress(f"Model Analyzer exited and left {left} of its processes running: stopped them")
    seconds = time.perf_counter() - t0
    if stopped_it:
        looped = skips >= LOOP_SKIPS
        why = "looped" if looped else f"ran past {timeout_s:g} s"
        detail = f" ({skips} re-proposed configs with no new measurement)" if looped else ""
        said = f"{why}: stopped after {seconds:.0f} s{detail}; tables from its checkpoint"
        (work / STOPPED_FILE).write_text(said + "\n")
        _summarize(work, log, why, mark)
        progress(f"Model Analyzer's search {said}")
        return seconds
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-5:])
        raise PeerError(f"Model Analyzer exited {proc.returncode} (log {log}):\n{tail}")
    return seconds


def collect(work: Path, spec: ModelSpec, variants: Sequence[str], sla: Sla, seconds: float, max_instances: int,
            max_concurrency: int) -> PeerRun:
    """What a finished search in ``work`` measured and picked (``seconds``: its wall time)."""
    log = work / "model-analyzer.log"
    csv_path = work / "export" / "results" / "metrics-model-inference.csv"
    if not csv_path.exists() or not log.exists():
        raise PeerError(f"Model Analyzer wrote no {csv_path.name} (log {log})")
    text = log.read_text()
    ranked = ranked_configs(csv_path.read_text(), text, work / "output", [f"{spec.name}_{v}" for v in variants], sla)
    return PeerRun(tool=f"Model Analyzer {VERSION}", search=SEARCH, variants=list(variants),
                   space=f"{', '.join(variants)}; instances 1..{max_instances}, max_batch_size 1..{spec.serving.max_batch_size} "
                         f"with dynamic_batching {{}}, concurrency 1..{max_concurrency}",
                   seconds=seconds, configs_measured=configs_measured(text), measurements=measurements(text),
                   pick=ranked[0], ranked=ranked, stopped=stopped(work))


def stopped(work: Path) -> str:
    """Why the search in ``work`` was stopped (STOPPED_FILE), or "" when it ended on its own."""
    path = work / STOPPED_FILE
    return path.read_text().strip() if path.exists() else ""


@dataclass(kw_only=True)
class PeerRunRecord(Record):
    """One Model Analyzer search (results/peer-run-*.json), saved as soon as it ends: `tck bench-peer
    --peer-from` judges it again without searching anew."""

    KIND: ClassVar[str] = "peer-run"
    SCHEMA: ClassVar[int] = 1
    WRITER: ClassVar[str] = "make bench-peer"
    model: str
    sla_ms: float
    percentile: str
    run: PeerRun


def configs_measured(log: str) -> int:
    """Configs Model Analyzer profiled: those it made at least one measurement of."""
    return len(set(re.findall(r"Profiling (\S+): concurrency=", log)))


def measurements(log: str) -> int:
    return len(re.findall(r"Profiling \S+: concurrency=", log))


def its_ranking(log: str) -> dict[str, list[str]]:
    """Model Analyzer's own order of its best configs, per model, from the line it ends its report with
    ("run `model-analyzer report --report-model-configs a,b,c ...`")."""
    out: dict[str, list[str]] = {}
    for m in re.finditer(r"detailed reports for the \d+ best (\S+) configurations, run `model-analyzer report "
                         r"--report-model-configs (\S+)", log):
        out[m.group(1)] = m.group(2).split(",")
    return out


def ranked_configs(csv_text: str, log: str, output: Path, models: Sequence[str], sla: Sla) -> list[PeerConfig]:
    """Each reported config's best row within the SLA (its CSV), in Model Analyzer's order per model; the
    models ordered by their first config's throughput (the user's pick between models)."""
    col = f"{sla.percentile} Latency (ms)"
    best: dict[str, PeerConfig] = {}
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    if rows and col not in rows[0]:
        raise PeerError(f"Model Analyzer's results have no {col!r} column (columns: {', '.join(rows[0])})")
    for row in rows:
        name, lat, thr = row["Model Config Path"], float(row[col]), float(row["Throughput (infer/sec)"])
        if lat > sla.ms or (name in best and best[name].throughput >= thr):
            continue
        best[name] = PeerConfig(name, row["Model"], config_serving(output / name), thr, int(row["Concurrency"]), lat)
    order = its_ranking(log)
    per_model = []
    for m in models:
        names = order.get(m) or sorted((n for n, c in best.items() if c.model == m), key=lambda n: -best[n].throughput)
        kept = [best[n] for n in names if n in best]
        if kept:
            per_model.append(kept)
    if not per_model:
        raise SlaUnmet(f"no config Model Analyzer measured meets {sla}: nothing to judge the tuner against; relax the SLA")
    per_model.sort(key=lambda cs: -cs[0].throughput)
    return [c for cs in per_model for c in cs]


def config_serving(model_dir: Path) -> ServingConfig:
    """The serving fields of one config Model Analyzer wrote (instances, max_batch_size, batching)."""
    path = model_dir / "config.pbtxt"
    if not path.exists():
        raise PeerError(f"Model Analyzer's config {path} is missing")
    s = serving_from_config(parse_config(path.read_text(), str(path)))
    return replace(s, response_cache=False)
