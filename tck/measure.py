"""Measurement commands: sweep, default (`make perf`), generate, report, bench, readme."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tck.paths import DEFAULT_BUILD, DEFAULT_REPO, WORK_DIR

LOADS = (1, 2, 4, 8, 16)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _settings(a, spec=None):
    """perf_analyzer's settings; the requests carry real inputs: --input-data FILE, else the spec's
    held-out data, else (only when asked, --random-data) perf_analyzer's random data."""
    from perf.errors import BadSettings
    from perf.measure.analyzer import PerfSettings
    data = str(a.input_data) if a.input_data else None
    if data is None and spec is not None and not a.random_data:
        from perf.measure.inputs import input_data_for
        data = str(input_data_for(spec, WORK_DIR))
    if data is None and not a.random_data:
        raise BadSettings("say what the requests carry: --spec NAME (its held-out data), --input-data FILE "
                          "(perf_analyzer's JSON), or --random-data")
    return PerfSettings(protocol=a.protocol, batch_size=a.batch_size, measurement_interval_ms=a.window_ms,
                        stability_pct=a.stability_pct, max_trials=a.max_trials, shared_memory=a.shared_memory,
                        distribution=a.distribution, input_data=data)


def may_record(spec) -> bool:
    """records/ and the README's figures are the project's own examples': a user's model is never
    recorded there (its results stay under results/); says so when skipped."""
    from perf.reports.records import is_project_example
    if is_project_example(spec.path):
        return True
    _say(f"record: skipped: {spec.path} is not one of the project's examples; records/ and README.md keep "
         "the project's own figures, your results are under results/")
    return False


def _progress(p) -> None:
    _say(f"  {p.mode}={p.load:g}: {p.throughput_infer_per_s:.0f} infer/s, p50 {p.p50_us / 1e3:.2f} ms, p99 {p.p99_us / 1e3:.2f} ms")


def cmd_sweep(a) -> int:
    """One sweep of a served model as it is configured (no reload)."""
    from build_engines.spec import load_spec
    from perf.measure.sweeps import sweep_as_served
    spec = load_spec(a.spec) if a.spec else None
    path, _ = sweep_as_served(a.url, a.model, a.mode, [float(x) for x in a.loads.split(",")], _settings(a, spec),
                              run_id=a.run_id, label=a.label, progress=_progress)
    print(path)
    return 0


def cmd_default(a) -> int:
    """`make perf`: FP32 and INT8, with and without dynamic batching, on the local Triton (or --url)."""
    from build_engines.pipeline import ensure_published, model_name
    from build_engines.repository import ServingConfig
    from build_engines.spec import load_spec
    from clients import LocalTriton
    from perf.reports.report import perf_report
    from perf.measure.results import finish_run, start_run
    from perf.measure.sweeps import new_run_id, sweep_config

    if a.model_name == "minilm":     # strings in: its own text inputs per sequence length
        from perf.reports.text import perf_minilm
        a.random_data = True         # each series brings its own data file (INPUT_DATA: your texts, one more series)
        print(perf_minilm(a.repository, a.build_dir, _settings(a), [float(x) for x in a.loads.split(",")], _say,
                          a.instance, a.price_per_hour, rounds=a.rounds, user_data=a.input_data))
        return 0
    spec = load_spec(a.model)
    run_id = new_run_id()
    s = _settings(a, spec)
    loads = [float(x) for x in a.loads.split(",")]
    t0 = time.perf_counter()
    expected = ([f"{v} (as served)" for v in ("fp32", "int8")] if a.url else
                [f"{v} {b}" for v in ("fp32", "int8") for b in ("dynamic batching", "no batching")]
                + (["replicates"] if a.rounds else []))
    manifest = start_run(spec.name, run_id, expected)
    if a.url:
        # A remote server (e.g. a GPU node): measure the models as they are served there.
        from perf.measure.sweeps import sweep_as_served
        for v in ("fp32", "int8"):
            _say(f"{v} (as served at {a.url}):")
            sweep_as_served(a.url, model_name(spec, v), "concurrency", loads, s, run_id=run_id,
                            label=f"{v} (as served)", variant=v, progress=_progress)
    else:
        ensure_published(a.model, a.repository, a.build_dir, progress=_say)
        with LocalTriton(a.repository, model_control="explicit") as srv:
            _say(f"local Triton: {srv.http_url} (log {srv.log_path})")
            for v in ("fp32", "int8"):
                name = model_name(spec, v)
                for batching in (True, False):
                    serving = ServingConfig.from_spec(spec, dynamic_batching=batching)
                    label = f"{v} {'dynamic batching' if batching else 'no batching'}"
                    _say(f"{label}:")
                    sweep_config(srv.http_url, srv.grpc_url, a.repository, name, serving, loads, s, run_id=run_id,
                                 label=label, variant=v, progress=_progress)
            if a.rounds:
                from perf.measure.replicates import headline_replicates
                _say(f"ratios: the four configs in turn at concurrency {a.ratio_load:g}, {a.rounds} rounds:")
                headline_replicates(srv, a.repository, spec, run_id, s, load=a.ratio_load, rounds=a.rounds,
                                    progress=_say)
            if not a.no_agreement:
                from perf.measure.agreement import agreement
                agreement(srv, spec, model_name(spec, "fp32"), a.repository, ServingConfig.from_spec(spec), run_id,
                          rates=[float(x) for x in a.agreement_rates.split(",")], settings=s, progress=_say)
    finish_run(manifest)
    out = perf_report(spec.name, run_id=run_id)
    if a.record and not a.url and a.rounds and may_record(spec):
        from perf.measure.results import AgreementRecord, ReplicatesRecord, SweepRecord, latest, load_all
        from perf.reports.records import record_perf, render_readme
        rep = latest(load_all(ReplicatesRecord, model=spec.name, run_id=run_id))
        agr = latest(load_all(AgreementRecord, run_id=run_id))
        srv_info = latest(load_all(SweepRecord, run_id=run_id)).server
        _say(f"record: {record_perf(rep, agr, srv_info)}; README {'updated' if render_readme() else 'unchanged'}")
    _say(f"perf: PASSED in {time.perf_counter() - t0:.0f} s; report {out}")
    print(out)
    return 0


def cmd_generate(a) -> int:
    """Open-loop load from our generator: Poisson, constant, or a trace file (e.g. a compressed day)."""
    import numpy as np
    from build_engines.spec import load_spec
    from perf.measure import loadgen
    from perf.measure.inputs import request_samples
    from perf.measure.results import LoadgenRecord, save
    spec = load_spec(a.spec)
    samples = request_samples(spec)
    if a.trace:
        offsets = loadgen.read_trace(a.trace, a.speedup)
    elif a.distribution == "poisson":
        offsets = loadgen.poisson_arrivals(a.rate, a.duration_s)
    else:
        offsets = loadgen.constant_arrivals(a.rate, a.duration_s)
    res, table = loadgen.run_open_loop(a.url, a.model, samples, offsets, protocol=a.protocol, processes=a.processes)
    path = save(LoadgenRecord(model=a.model, url=a.url, arrivals=str(a.trace or a.distribution), rate=a.rate,
                              summary=res.as_dict(), records_columns=["scheduled_s", "lateness_s", "latency_s", "ok"],
                              records=np.round(table, 6).tolist()), name=a.model)
    _say(json.dumps(res.as_dict(), indent=1))
    print(path)
    return 0 if res.errors == res.shed else 1       # shed requests are an outcome under overload, not a fault


def cmd_report(a) -> int:
    from perf.reports.report import perf_report
    print(perf_report(a.model_name, run_id=a.run_id))
    return 0


def cmd_bench(a) -> int:
    from perf.measure.bench import MODELS, run, summary_lines
    models = tuple(m.strip() for m in a.models.split(",") if m.strip()) if a.models else MODELS
    path = run(a.build_dir, threads=a.threads, budget_s=a.budget_s, replicates=a.replicates, models=models)
    from perf.measure.results import BenchRecord
    doc = BenchRecord.read(path)
    for line in summary_lines(doc):
        _say(line)
    if a.record:
        from perf.reports.records import record_bench, render_readme
        _say(f"record: {record_bench(doc)}; README {'updated' if render_readme() else 'unchanged'}")
    _say(f"bench: PASSED; {path}")
    print(path)
    return 0


def cmd_bench_overload(a) -> int:
    from perf.errors import BadSettings
    from perf.measure.overload import OverloadRecord, run
    if a.record and a.rounds < 5:
        raise BadSettings(f"--record with --rounds {a.rounds}: a committed record takes at least 5 rounds")
    path = run(a.build_dir, rounds=a.rounds, seconds=a.seconds, overload_model=a.overload_model, progress=_say)
    if a.record:
        from perf.reports.records import record_overload, render_readme
        _say(f"record: {record_overload(OverloadRecord.read(path))}; README {'updated' if render_readme() else 'unchanged'}")
    _say(f"bench-overload: PASSED; {path}")
    print(path)
    return 0


def cmd_readme(a) -> int:
    from perf.reports.records import render_readme
    _say("README.md " + ("updated from records/" if render_readme() else "already matches records/"))
    return 0


def _perf_opts(s, default_protocol="grpc"):
    s.add_argument("--protocol", default=default_protocol, choices=("grpc", "http"))
    s.add_argument("--batch-size", type=int, default=1)
    s.add_argument("--window-ms", type=int, default=2000)
    s.add_argument("--stability-pct", type=float, default=25.0)
    s.add_argument("--max-trials", type=int, default=10)
    s.add_argument("--shared-memory", default="none", choices=("none", "system"))
    s.add_argument("--distribution", default="constant", choices=("constant", "poisson"))
    s.add_argument("--input-data", type=Path, default=None, help="perf_analyzer JSON input data to send")
    s.add_argument("--random-data", action="store_true",
                   help="send perf_analyzer's random data (default: the spec's held-out samples); its random "
                        "bytes hold NaN in large float inputs, which the CPU target refuses (allow_nonfinite)")


def add_commands(sub) -> None:
    s = sub.add_parser("sweep", help="perf_analyzer sweep of a served model -> results/")
    s.add_argument("--model", required=True)
    s.add_argument("--spec", default=None, help="the model's spec: its held-out samples are sent")
    s.add_argument("--url", default="127.0.0.1:8001")
    s.add_argument("--mode", default="concurrency", choices=("concurrency", "request_rate"))
    s.add_argument("--loads", default="1,2,4,8,16")
    s.add_argument("--label", default="")
    s.add_argument("--run-id", default="")
    _perf_opts(s)
    s.set_defaults(fn=cmd_sweep)

    s = sub.add_parser("default", help="`make perf`: FP32/INT8 x batching on/off on the local Triton, + report")
    s.add_argument("--model", default="digits")
    s.add_argument("--url", default="", help="remote Triton gRPC host:port; measure its models as served")
    s.add_argument("--loads", default=",".join(map(str, LOADS)))
    s.add_argument("--agreement-rates", default="200,400")
    s.add_argument("--no-agreement", action="store_true")
    s.add_argument("--rounds", type=int, default=5,
                   help="interleaved rounds behind each stated ratio (0: sweeps only, no ratios)")
    s.add_argument("--ratio-load", type=float, default=16, help="the concurrency the ratios are measured at")
    s.add_argument("--record", action="store_true", help="also write records/perf-<model>.json and the README table")
    s.add_argument("--instance", default=None, help="price this machine as this catalog kind (MiniLM's cost table; "
                                                    "default: matched by cores and measured memory)")
    s.add_argument("--price-per-hour", type=float, default=None)
    s.add_argument("--repository", type=Path, default=DEFAULT_REPO)
    s.add_argument("--build-dir", type=Path, default=DEFAULT_BUILD)
    _perf_opts(s)
    s.set_defaults(fn=cmd_default)

    s = sub.add_parser("generate", help="our open-loop generator (Poisson/constant/trace) -> results/")
    s.add_argument("--model", required=True)
    s.add_argument("--spec", default="digits", help="spec whose evaluation data are sent")
    s.add_argument("--url", default="127.0.0.1:8001")
    s.add_argument("--protocol", default="grpc", choices=("grpc", "http"))
    s.add_argument("--rate", type=float, default=100.0)
    s.add_argument("--duration-s", type=float, default=5.0)
    s.add_argument("--distribution", default="poisson", choices=("poisson", "constant"))
    s.add_argument("--trace", type=Path, default=None)
    s.add_argument("--speedup", type=float, default=1.0)
    s.add_argument("--processes", type=int, default=1)
    s.set_defaults(fn=cmd_generate)

    s = sub.add_parser("report", help="Markdown + plots from the newest `make perf` results")
    s.add_argument("--model", default="digits")
    s.add_argument("--run-id", default=None)
    s.set_defaults(fn=cmd_report)

    s = sub.add_parser("bench", help="`make bench`: ONNX Runtime INT8/FP32 in process -> results/")
    s.add_argument("--build-dir", type=Path, default=DEFAULT_BUILD)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--budget-s", type=float, default=0.4, help="seconds per timing of one variant in one replicate")
    s.add_argument("--replicates", type=int, default=7, help="interleaved replicates per variant and batch")
    s.add_argument("--models", default="", help="comma-separated specs (default: digits,signals,resnet18_bench)")
    s.add_argument("--record", action="store_true", help="also write records/bench-ort-int8.json and the README table")
    s.set_defaults(fn=cmd_bench)

    s = sub.add_parser("bench-overload", help="`make bench-overload`: the backlog bound's low-load cost and 2x overload")
    s.add_argument("--build-dir", type=Path, default=DEFAULT_BUILD)
    s.add_argument("--rounds", type=int, default=7, help="interleaved rounds of the low-load on/off comparison")
    s.add_argument("--seconds", type=float, default=60.0, help="seconds at twice the capacity, bound on and off")
    s.add_argument("--overload-model", default="resnet18_bench",
                   help="the example offered twice its capacity (fixed-shape inputs, a capacity this machine's generator "
                        "can double)")
    s.add_argument("--record", action="store_true", help="also write records/bench-overload.json and the README lines")
    s.set_defaults(fn=cmd_bench_overload)

    s = sub.add_parser("readme", help="regenerate the README's measured-figures block from records/")
    s.set_defaults(fn=cmd_readme)
