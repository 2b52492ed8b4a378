"""`make bench-overload`: what the CPU model's backlog bound (``backlog_max``, on by default) costs and
what it buys, on the published default config of the project's own examples.

- Its cost at low load: perf_analyzer at concurrency 1, the default config (bound on) and the same
  config with ``backlog_max = 0`` (off) measured in turn for several rounds; the on/off ratio within each
  round, summarized by its median and 95 % bootstrap interval. The bound reads nothing while batches
  arrive short of full, so the ratio is expected to sit at 1. Digits only: a model with a variable-length
  input (signals) has no bound, on and off would be the same config.
- What it buys: our open-loop generator offering twice the measured capacity (Poisson) for a minute,
  bound on and bound off: tritonserver's memory growth (server + stubs, resident), the accepted
  requests' p99, how many were shed (``Overloaded``) and how many the model still served.
  perf_analyzer cannot measure this: it aborts at the first shed request.

The overload model must be one whose capacity a generator on the same machine can double and whose
inputs have a fixed shape (a variable-length model is not bounded: ort_model.Backlog): on 2 cores that
is ``resnet18_bench`` (~27 requests/s), not digits (~5,000 requests/s). The server runs on half the cores
and both clients on the others (``split_cores``), so the generator's CPU does not come out of the share
the capacity was measured with. Its requests are 600 KB, so the
bound's own 128 queued requests weigh a few hundred MB: the bound caps memory, it does not make it small."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from pathlib import Path
from typing import Callable, ClassVar

from build_engines.records import Record
from build_engines.spec import ModelSpec, ServingConfig
from perf.measure import analyzer
from perf.measure.loadgen import poisson_arrivals, run_open_loop
from perf.measure.replicates import interleaved, ratio
from perf.measure.results import Interval
from perf.measure.sweeps import load_candidate, server_info

ON, OFF = "backlog on", "backlog off"
CAPACITY_CONCURRENCY = 32      # perf_analyzer's in-flight requests for the capacity: far below the default bound


@dataclasses.dataclass
class OverloadRun:
    """One minute at twice the capacity, bound on or off."""

    label: str                 # ON | OFF
    backlog_max: int           # the bound in requests (0: off)
    max_batch_size: int
    capacity_rps: float        # perf_analyzer, closed loop at ``capacity_concurrency`` in flight, just before
    sent_rps: float            # what the generator really sent (scheduled at 2x capacity)
    seconds: float
    scheduled: int
    ok: int
    shed: int                  # answered Overloaded
    faults: int                # any other error (timeouts included)
    served_rps: float
    accepted_p50_ms: float
    accepted_p99_ms: float
    memory_before_mb: float
    memory_peak_mb: float
    memory_every_10s_mb: list[float]     # resident memory 10 s, 20 s, ... after the overload began
    error_examples: list[str] = dataclasses.field(default_factory=list)   # the generator's, up to 3 distinct
    server_cores: int = 0      # the cores tritonserver ran on, the clients on the others (0: all shared)

    @property
    def memory_growth_mb(self) -> float:
        return self.memory_peak_mb - self.memory_before_mb

    @property
    def wait_bound_ms(self) -> float:
        """What an accepted request can wait with the bound on: the bound's samples ahead of it, plus one
        full batch, at the model's capacity."""
        return (self.backlog_max + self.max_batch_size) / self.capacity_rps * 1e3 if self.backlog_max else float("inf")

    def text(self) -> str:
        cores = f" (server on {self.server_cores} cores, clients on the others)" if self.server_cores else ""
        return (f"{self.label}{cores}: capacity {self.capacity_rps:.0f}/s, sent {self.sent_rps:.0f}/s for {self.seconds:.0f} s; "
                f"served {self.served_rps:.0f}/s, shed {self.shed} of {self.scheduled}, faults {self.faults}; "
                f"accepted p50 {self.accepted_p50_ms:.0f} ms, p99 {self.accepted_p99_ms:.0f} ms; "
                f"memory +{self.memory_growth_mb:.0f} MB (peak {self.memory_peak_mb:.0f} MB; every 10 s: "
                + ", ".join(f"+{m - self.memory_before_mb:.0f}" for m in self.memory_every_10s_mb) + ")")


@dataclasses.dataclass(kw_only=True)
class OverloadRecord(Record):
    KIND: ClassVar[str] = "bench-overload"
    WRITER: ClassVar[str] = "make bench-overload"
    command: str
    triton: str                                     # the server's version
    low_load_window_ms: int
    low_load_throughput: dict[str, dict[str, list[float]]]   # model -> ON / OFF -> infer/s at concurrency 1, per round
    low_load_ratio: dict[str, Interval]                      # model -> ON / OFF within each round
    overload_model: str
    capacity_concurrency: int
    runs: list[OverloadRun]


def low_load_cost(srv, repository: Path, spec: ModelSpec, settings: analyzer.PerfSettings, rounds: int,
                  progress: Callable[[str], None] = print) -> tuple[dict[str, list[float]], Interval]:
    """Throughput at concurrency 1, bound on and off in turn; the on/off ratio's interval."""
    on = ServingConfig.from_spec(spec)
    configs = {ON: (f"{spec.name}_fp32", on), OFF: (f"{spec.name}_fp32", dataclasses.replace(on, backlog_max=0))}
    thr = interleaved(srv.http_url, srv.grpc_url, repository, configs, 1, settings, rounds, progress)
    return thr, ratio(thr, ON, OFF)


def _memory_watch(srv, every_s: float = 0.25, mark_s: float = 10.0):
    """Starts sampling the server's resident memory (server + stubs); call the result to stop:
    -> (peak MB, MB at every ``mark_s`` seconds from the start)."""
    peak, marks, done = [srv.rss_gib(peak=False)], [], threading.Event()
    start = time.monotonic()

    def watch():
        while not done.wait(every_s):
            now = srv.rss_gib(peak=False)
            peak[0] = max(peak[0], now)
            if time.monotonic() - start >= mark_s * (len(marks) + 1):
                marks.append(now * 1024)
    t = threading.Thread(target=watch, daemon=True)
    t.start()

    def stop() -> tuple[float, list[float]]:
        done.set()
        t.join()
        return peak[0] * 1024, marks
    return stop


def split_cores() -> frozenset[int] | None:
    """The server's cores for an overload run: the first half of those this process may use (None on one
    core). The clients (perf_analyzer for the capacity, our generator for the overload) get the rest: the
    generator sends twice what perf_analyzer does and spends more CPU a request, so on shared cores the
    overload came out of the server's share and it served less than the capacity measured beside
    perf_analyzer (the more so the faster the machine's model: 0.73x at 938 requests/s on an Intel Xeon,
    where an AMD EPYC at ~500 requests/s passed). With cores of its own, the server's share is the same
    for the capacity and the overload, on any machine."""
    cores = sorted(os.sched_getaffinity(0))
    return frozenset(cores[:len(cores) // 2]) if len(cores) > 1 else None


@contextlib.contextmanager
def _on_cores(cpus: frozenset[int] | None):
    """The calling thread, and the processes it starts meanwhile, on ``cpus``."""
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def twice_capacity(srv, repository: Path, spec: ModelSpec, samples: list[dict], settings: analyzer.PerfSettings,
                   bound_on: bool, seconds: float = 60.0, concurrency: int = CAPACITY_CONCURRENCY) -> OverloadRun:
    """Load the default config (bound on) or the same with ``backlog_max = 0``, measure its capacity with
    perf_analyzer, then offer it twice that for ``seconds`` with our generator (spawned: none of the
    caller's heap or threads in it). A server started on ``split_cores()`` leaves the other cores to both
    clients."""
    model = f"{spec.name}_fp32"
    serving = ServingConfig.from_spec(spec)
    serving = serving if bound_on else dataclasses.replace(serving, backlog_max=0)
    cfg = load_candidate(srv.http_url, repository, model, serving)
    bound = int(cfg.parameters["backlog_max"].string_value)          # what the served model.py enforces
    clients = frozenset(os.sched_getaffinity(0)) - srv.cpus if srv.cpus else None
    with _on_cores(clients):
        capacity = analyzer.measure(srv.grpc_url, model, "concurrency", concurrency, settings).requests_per_s
        before = srv.rss_gib(peak=False) * 1024
        stop = _memory_watch(srv)
        try:
            res, table = run_open_loop(srv.grpc_url, model, samples, poisson_arrivals(2 * capacity, seconds),
                                       spawn=True)
        finally:
            peak, marks = stop()
    sent = table[:, 0] + table[:, 1]
    return OverloadRun(label=ON if bound else OFF, backlog_max=bound, max_batch_size=cfg.max_batch_size,
                       capacity_rps=capacity, sent_rps=float(len(sent) / max(sent.max() - sent.min(), 1e-9)),
                       seconds=seconds, scheduled=res.scheduled, ok=res.ok, shed=res.shed, faults=res.errors - res.shed,
                       served_rps=res.throughput_per_s, accepted_p50_ms=res.p50_ms, accepted_p99_ms=res.p99_ms,
                       memory_before_mb=before, memory_peak_mb=peak, memory_every_10s_mb=marks,
                       error_examples=res.error_examples, server_cores=len(srv.cpus or ()))


def _built(build_dir: Path, repository: Path, spec: ModelSpec) -> ModelSpec:
    """The example built FP32 and published with the project's default serving config (always built
    again: the published folder carries the served model's code, which must be this checkout's)."""
    from build_engines.pipeline import Pipeline
    Pipeline(spec, build_dir / spec.name, ("fp32",)).run(repository, "cpu", ServingConfig.from_spec(spec),
                                                         tensorrt=False, bench=False)
    return spec


def run(build_dir: Path, rounds: int = 7, seconds: float = 60.0, low_load_models: tuple[str, ...] = ("digits",),
        overload_model: str = "resnet18_bench", progress: Callable[[str], None] = print,
        results_dir: Path | None = None) -> Path:
    """The whole bench, each part on a fresh local Triton; returns the results file."""
    from build_engines.spec import load_spec
    from perf.errors import BadSettings
    if rounds < 3 or seconds <= 0:
        raise BadSettings(f"--rounds {rounds} --seconds {seconds:g}: take at least 3 rounds (an interval of fewer says "
                          "nothing) and a positive number of seconds")
    heavy = load_spec(overload_model)
    if heavy.dynamic_input():
        raise BadSettings(f"--overload-model {overload_model}: it has a variable-length input, which the backlog bound "
                          "does not cover (off by default); name a fixed-shape example, e.g. resnet18_bench")
    from clients import LocalTriton
    from perf.measure.inputs import input_data_for, request_samples
    from perf.measure.results import save
    work = Path(build_dir) / "bench-overload"
    repository = work / "repository"
    _built(build_dir, repository, heavy)
    thr, cost, window_ms, triton = {}, {}, 0, ""
    for name in low_load_models:
        low = _built(build_dir, repository, load_spec(name))
        low_settings = analyzer.PerfSettings(input_data=str(input_data_for(low, work)))
        window_ms = low_settings.measurement_interval_ms
        progress(f"low load: {low.name}, concurrency 1, bound on and off in turn, {rounds} rounds")
        with LocalTriton(repository, model_control="explicit", load=[f"{low.name}_fp32"],
                         log_path=work / f"low-{name}.log") as srv:
            triton = str(server_info(srv.http_url).get("version"))
            thr[name], cost[name] = low_load_cost(srv, repository, low, low_settings, rounds, progress)
        progress(f"low load: {low.name} on/off {cost[name].text()}")
    heavy_settings = analyzer.PerfSettings(input_data=str(input_data_for(heavy, work, limit=8)),
                                           measurement_interval_ms=5000)
    samples = request_samples(heavy, 16)
    runs = []
    for bound_on in (True, False):
        progress(f"twice the capacity for {seconds:.0f} s: {heavy.name}, {'bound on (the default)' if bound_on else 'bound off'}")
        with LocalTriton(repository, model_control="explicit", load=[f"{heavy.name}_fp32"], cpus=split_cores(),
                         log_path=work / f"overload-{'on' if bound_on else 'off'}.log") as srv:
            runs.append(twice_capacity(srv, repository, heavy, samples, heavy_settings, bound_on, seconds))
        progress("  " + runs[-1].text())
    rec = OverloadRecord(command="make bench-overload", triton=triton, low_load_window_ms=window_ms,
                         low_load_throughput=thr, low_load_ratio=cost,
                         overload_model=heavy.name, capacity_concurrency=CAPACITY_CONCURRENCY, runs=runs)
    return save(rec, results_dir, name=heavy.name)
