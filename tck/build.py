"""Build, serve and call commands: engines, demo, serve, infer, compare."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from build_engines.errors import UserError
from tck.paths import DEFAULT_BUILD, DEFAULT_REPO


def _console():
    from rich.console import Console
    return Console(stderr=True, highlight=False, markup=False)


def _spec_refs(names: str) -> list:
    """--model as the specs it names, in order: paths or names; '' the examples, 'all' with minilm."""
    from build_engines.spec import SPEC_DIR
    if names in ("", "all"):
        return [p for p in sorted(SPEC_DIR.glob("*.toml")) if p.stem != "minilm" or names == "all"]
    return [n.strip() for n in names.split(",") if n.strip()]


def _specs(names: str, build_dir: Path | None = None) -> list:
    from build_engines.spec import load_spec
    return [load_spec(n, build_dir) for n in _spec_refs(names)]


def _interrupted_build(e: KeyboardInterrupt, where: str, published: list[str], repository: Path):
    """The Interrupted to say for ``build``: the step (or ``where``) and what this command had
    published before it, whole, from earlier specs; the rest of the repository as it was."""
    import signal

    from build_engines.errors import Interrupted
    stop = e if isinstance(e, Interrupted) and e.where else Interrupted(getattr(e, "signum", signal.SIGINT), where)
    if published:
        stop.state = (f"{', '.join(published)} had been published to {repository}, whole, by this command before it"
                      f"{'; ' + stop.state if stop.state and 'nothing published' not in stop.state else ''}; "
                      f"nothing else changed")
    elif not stop.state:
        stop.state = f"nothing was published; the repository {repository} is as it was before"
    return stop


def cmd_engines(a) -> int:
    build(a)
    return 0


def build(a) -> list:
    """Build every spec of --model; returns the pipeline results."""
    con = _console()
    precisions = tuple(p.strip() for p in a.precisions.split(",") if p.strip())
    results: list = []
    published: list[str] = []         # by earlier specs of this command: said if an interrupt comes
    for ref in _spec_refs(a.model):
        try:
            res = _build_one(a, ref, con, precisions)
        except KeyboardInterrupt as e:
            raise _interrupted_build(e, f"loading the spec {ref}", published, a.repository) from e
        results.append(res)
        published += res.published
    return results


def _build_one(a, ref, con, precisions):
    """Build one spec of --model: load it, run the pipeline, print what it found."""
    from build_engines.errors import Interrupted
    from build_engines.pipeline import Pipeline
    from build_engines.repository import ServingConfig
    from build_engines.spec import load_spec
    spec = load_spec(ref, a.build_dir)
    t0 = time.perf_counter()
    serving = ServingConfig.from_spec(spec, **({"instances": a.instances} if a.instances else {}))
    with con.status(f"building {spec.name}") as st:
        def progress(msg: str) -> None:
            if msg.endswith("..."):
                st.update(msg)
            else:
                con.print(msg)
        pipe = Pipeline(spec, a.build_dir / spec.name, precisions, a.calibration, progress=progress)
        only = tuple(x.strip() for x in a.only.split(",") if x.strip()) if getattr(a, "only", "") else None
        try:
            res = pipe.run(None if a.no_publish else a.repository, a.target, serving,
                           tensorrt=not a.no_tensorrt, only=only)
        except UserError:
            if pipe.result.report_path:
                con.print(f"build report: {pipe.result.report_path}")
            raise
    try:
        _print_result(con, spec, res, pipe.result.report_path, t0)
    except KeyboardInterrupt as e:
        import signal
        done = (f"{', '.join(res.published)} had been published to {a.repository}, whole, before it" if res.published
                else "nothing was published")
        raise Interrupted(getattr(e, "signum", signal.SIGINT), f"printing the results of {spec.name} (its build had "
                          f"finished)", done) from e
    return res


def _print_result(con, spec, res, report_path, t0: float) -> None:
    from build_engines.pipeline import Status, speed_text
    con.print(f"build report: {report_path}")
    if res.calibration:
        con.print(f"  CPU INT8: {res.calibration['int8_isa']}, recipe {res.calibration['cpu_recipe']}")
    for name, g in res.gates.items():
        t = res.timings.get(name, {})
        speed = "  ".join(f"b{v['batch']} {v['p50_ms']:.3f} ms ({v['samples_per_s']:.0f}/s)" for v in t.values())
        f = g.details["fp32"]
        fid = (f"agreement {f['agreement']:.4f}" if "agreement" in f else f"cosine {f['cosine_mean']:.4f}") + \
            f", rel err {f['relative_error']:.3f}"
        verdict = "passed" if g.passed and g.gated else "not gated (speed only)" if not g.gated else "REFUSED"
        con.print(f"  {name:12s} {g.metric} {g.value:.4f} (FP32 {g.reference:.4f}) vs FP32: {fid}; {verdict}  {speed}")
        if name in res.coverage:
            con.print(f"  {'':12s} {res.coverage[name].text()}")
        if name in res.speed:
            con.print(f"  {'':12s} speed vs FP32: {speed_text(res.speed[name])}")
    skipped = [s for s in res.steps if s.status is Status.SKIPPED and not s.detail.startswith("not selected")]
    for s in skipped:
        con.print(f"  note: {s.name} skipped: {s.detail}")
    con.print(f"{spec.name}: PASSED in {time.perf_counter() - t0:.1f} s")


def _spec_of(model_dir_name: str) -> str:
    """The MODEL= that rebuilds a published folder: its spec's name (digits_int8 -> digits)."""
    from build_engines.pipeline import PRECISIONS
    base, _, precision = model_dir_name.rpartition("_")
    return base if base and precision in PRECISIONS else "<its spec>"


def _print_access(srv) -> None:
    """What each restricted API needs on this server, or a warning where it was opened."""
    for key, keyed, opened in (
            (srv.admin_key, f"Admin APIs (shared memory, load/unload, logging, trace) need header triton-admin-key "
                            f"(HTTP) or triton-grpc-protocol-triton-admin-key (gRPC): {srv.admin_key} "
                            f"(--open-admin-apis opens them to every local process)",
             "WARNING: admin APIs are OPEN: any local process can load models (runs their code) and register "
             "shared memory"),
            (srv.infer_key, f"Inference: gRPC {srv.grpc_url} needs no key; HTTP inference needs header "
                            f"triton-infer-key: {srv.infer_key} (export TRITON_INFER_KEY=... for tck infer; one "
                            f"malformed JSON body kills Triton 2.51, so the key keeps untrusted callers off its "
                            f"parser; --open-http-inference drops it)",
             "WARNING: HTTP inference is OPEN: one malformed JSON body (nested 50,000 deep, or a huge declared "
             "shape) kills Triton 2.51")):
        print(keyed if key else opened, flush=True)


LOCAL_TRITON_VERSION = "2.51.0"     # the tritonserver of nvidia-pytriton 0.7.0 (make setup)


def cmd_serve(a) -> int:
    from clients.server import LocalTriton, docker_command
    from build_engines.repository import published_models, queue_policy_warning
    image = os.environ.get("TRITON_IMAGE", "")
    version = "" if image else LOCAL_TRITON_VERSION
    for name in published_models(a.repository):
        why = queue_policy_warning(Path(a.repository) / name, version, image)
        if why:
            print(f"serve: WARNING: {why}", file=sys.stderr, flush=True)
    if image:
        cmd = docker_command(a.repository, image, a.http_port or 8000, a.grpc_port or 8001, a.metrics_port or 8002)
        print(" ".join(cmd), flush=True)
        os.execvp(cmd[0], cmd)
    srv = LocalTriton(a.repository, http_port=a.http_port, grpc_port=a.grpc_port, metrics_port=a.metrics_port,
                      model_control=a.model_control, open_admin_apis=a.open_admin_apis,
                      open_http_inference=a.open_http_inference,
                      load_each=a.model_control == "none")
    import signal

    def stop(signum, frame):  # SIGTERM (kill, timeout, k8s) must stop the server too, not orphan it
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    stopped = False
    with srv:
        if srv.repaired:
            print(f"serve: repaired the repository: {'; '.join(srv.repaired)}", file=sys.stderr,
                  flush=True)
        for name, why in srv.refused.items():
            print(f"serve: NOT SERVED {name}: {why.rstrip('.')}. Fix: rebuild it (make engines MODEL={_spec_of(name)}) "
                  f"or remove it (.venv/bin/python -m tck unpublish {name})", file=sys.stderr, flush=True)
        if srv.load_each and not srv.served and not srv.refused:
            print(f"serve: FAILED: the repository {a.repository} holds no model; build one first (make engines)",
                  file=sys.stderr)
            return 1
        if srv.load_each and (not srv.served or (a.strict and srv.refused)):
            why = "no model of the repository loads" if not srv.served else "--strict: a model did not load"
            print(f"serve: FAILED: {why} ({len(srv.refused)} not served, see above)", file=sys.stderr)
            return 1
        print(f"Triton ready: HTTP {srv.http_url}  gRPC {srv.grpc_url}  metrics {srv.metrics_url}  log {srv.log_path}", flush=True)
        if srv.load_each:
            print(f"serving {len(srv.served)} model(s): {', '.join(srv.served)}", flush=True)
        _print_access(srv)
        try:
            while srv.alive():
                time.sleep(0.5)
        except KeyboardInterrupt:
            stopped = True
        code, tail = (srv.proc.returncode if srv.proc else None), srv.log_tail(8)
    if stopped:
        return 0
    print(f"serve: FAILED: tritonserver died (exit code {code}); last lines of {srv.log_path}:\n{tail}", file=sys.stderr)
    return 1


class UsageError(UserError):
    """A wrong flag or input file: one line naming it, exit 2."""


def _read_inputs(path: Path) -> dict:
    import zipfile

    import numpy as np
    if path.suffix not in (".npz", ".json"):
        raise UsageError(f"--input {path}: give an .npz with one array per input name, or a .json {{name: nested list}}")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        return {k: np.asarray(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError, zipfile.BadZipFile, AttributeError) as e:
        raise UsageError(f"--input {path}: cannot read it ({type(e).__name__}: {e})") from e


def _as_model_dtype(name: str, raw, want, path: Path):
    """Cast only where nothing is lost: same kind (or int -> float), and no finite value overflowing."""
    import numpy as np
    raw = np.asarray(raw)
    if raw.dtype == object or raw.dtype.kind in "SU":
        if want == np.object_:
            return raw.astype(object)
        raise UsageError(f"--input {path}: input {name!r} holds text, the model wants {want}")
    if not (np.can_cast(raw.dtype, want, casting="same_kind") or (raw.dtype.kind in "iub" and np.dtype(want).kind == "f")):
        raise UsageError(f"--input {path}: input {name!r} is {raw.dtype}, which does not convert safely to {want}")
    out = raw.astype(want)
    if raw.dtype.kind == "f" and np.isfinite(raw).all() and not np.isfinite(out).all():
        raise UsageError(f"--input {path}: input {name!r} has values beyond {want}'s range")
    if raw.dtype.kind in "iu" and np.dtype(want).kind in "iu" and not np.array_equal(out.astype(raw.dtype), raw):
        raise UsageError(f"--input {path}: input {name!r} has values beyond {want}'s range")
    return out


def cmd_infer(a) -> int:
    from clients import TritonClient
    raw = _read_inputs(a.input)
    with TritonClient(a.url, a.model, a.protocol, a.timeout_s, allow_nonfinite=a.allow_nonfinite) as c:
        meta = c.metadata()
        missing = [t.name for t in meta.inputs if t.name not in raw]
        if missing:
            raise UsageError(f"--input {a.input}: missing inputs {missing}")
        inputs = {t.name: _as_model_dtype(t.name, raw[t.name], t.numpy_dtype, a.input) for t in meta.inputs}
        if a.cache:
            from clients.redis_cache import CachedClient, CachePolicy
            ignore = tuple(n.strip() for n in a.cache_ignore_inputs.split(",") if n.strip())
            cached = CachedClient(c, a.cache_url, CachePolicy(ttl_s=a.cache_ttl_s, ignore_inputs=ignore))
            out = cached.infer(inputs)
            print(f"cache: {cached.last.value}", file=sys.stderr)
        else:
            out = c.infer(inputs)
    print(json.dumps({k: v.tolist() if v.dtype != object else [x.decode() for x in v.ravel()] for k, v in out.items()}))
    return 0


def cmd_demo(a) -> int:
    """Build the digits model, publish, serve on a real local Triton, classify the held-out split and
    check each served variant against FP32: top-1 agreement and relative logit error, the gate's thresholds."""
    import numpy as np
    from build_engines.gate import fidelity, outputs_of, shortfalls
    from build_engines.isa import int8_isa
    from build_engines.examples.digits import evaluation_set
    from build_engines.pipeline import artifact_for, model_name
    from clients import LocalTriton, TritonClient
    a.model, a.no_publish, a.target, a.instances, a.no_tensorrt = "digits", False, "cpu", 0, False
    res = build(a)[0]
    spec = res.spec
    inputs, labels = evaluation_set()
    x = inputs["image"]
    reference = outputs_of(res.artifacts["fp32"]["onnx"], inputs)
    con = _console()
    ok = True
    with LocalTriton(a.repository) as srv:
        con.print(f"Triton ready on {srv.http_url} (log {srv.log_path}); CPU integer ISA: {int8_isa()}")
        for v in a.precisions.split(","):
            name = model_name(spec, v)
            with TritonClient(srv.http_url, name) as c:
                served = np.concatenate([c.infer({"image": x[i:i + 32]})["logits"] for i in range(0, len(x), 32)])
            local = outputs_of(artifact_for(res, v, "cpu"), inputs)
            acc, acc_local = (served.argmax(1) == labels).mean() * 100, (local.argmax(1) == labels).mean() * 100
            fid = fidelity(spec, served, reference)
            missed = shortfalls(spec, fid, "FP32")
            same = "equal to" if acc == acc_local else "DIFFERENT from"
            print(f"{name}: served top-1 {acc:.2f}% on {len(labels)} held-out images ({same} ONNX Runtime in process: "
                  f"{acc_local:.2f}%); vs FP32: agreement {fid['agreement']:.4f}, relative logit error "
                  f"{fid['relative_error']:.4f}{' -- ' + '; '.join(missed) if missed else ''}", flush=True)
            ok = ok and acc == acc_local and acc >= 95.0 and not missed
    if not ok:
        print("demo: FAILED")
        return 1
    print("demo: PASSED")
    return 0


def cmd_unpublish(a) -> int:
    """Remove models from the repository (names of model folders, or a spec: all its variants)."""
    from build_engines.repository import repair_interrupted_publish, unpublish
    for line in repair_interrupted_publish(a.repository):      # what a killed publish left, said in one line
        print(f"unpublish: repaired the repository: {line}", file=sys.stderr)
    names = unpublish_names(a.repository, a.models, a.build_dir)
    for n in unpublish(a.repository, names):
        print(f"unpublished {n} from {a.repository}")
    return 0


def unpublish_names(repository: Path, given: list[str], build_dir: Path) -> list[str]:
    """A model folder's name stands for itself; a spec (name or path) for every folder it publishes."""
    from build_engines.pipeline import published_names
    from build_engines.spec import load_spec
    out: list[str] = []
    for g in given:
        if (Path(repository) / g).is_dir() and not g.endswith(".toml"):
            out.append(g)
            continue
        try:
            spec = load_spec(g, build_dir, resolve=False)   # its name and variants; the user's code is not run
        except UserError as e:
            raise UsageError(f"{g!r} is neither a model in {repository} nor a spec ({e})") from e
        mine = [n for n in published_names(spec) if (Path(repository) / n).is_dir()]
        if not mine:
            raise UsageError(f"{g!r}: none of its models ({', '.join(published_names(spec))}) is in {repository}; "
                             f"nothing to unpublish")
        out += mine
    return list(dict.fromkeys(out))


def cmd_compare(a) -> int:
    from build_engines.compare import compare_variants
    spec = _specs(a.model)[0]
    ok = compare_variants(spec, a.build_dir / spec.name, a.variants.split(","), a.atol, a.rtol, a.samples)
    print("compare: PASSED" if ok else "compare: FAILED (outside tolerance; see the statistics above)")
    return 0 if ok else 1


def add_commands(sub) -> None:

    def build_opts(s):
        s.add_argument("--model", default="digits", help="spec name(s) or .toml path(s), comma-separated; 'all'")
        s.add_argument("--precisions", default="fp32,fp16,int8")
        s.add_argument("--calibration", default=None, help="minmax | entropy | percentile (default: the spec's)")
        s.add_argument("--repository", type=Path, default=DEFAULT_REPO)
        s.add_argument("--build-dir", type=Path, default=DEFAULT_BUILD)

    s = sub.add_parser("engines", help="build, gate, time and publish precision variants")
    build_opts(s)
    s.add_argument("--target", default="cpu", choices=("cpu", "onnxruntime", "tensorrt_plan"))
    s.add_argument("--instances", type=int, default=0)
    s.add_argument("--no-publish", action="store_true")
    s.add_argument("--no-tensorrt", action="store_true", help="skip the TensorRT compile even where it could run")
    s.add_argument("--only", default="", help="run just these steps, from what earlier runs left in the build folder: "
                                             "load,export,fp16,int8,gate,timing,tensorrt,publish (e.g. int8,gate)")
    s.set_defaults(fn=cmd_engines)

    s = sub.add_parser("demo", help="build digits, serve it on a real local Triton, print the served accuracy")
    build_opts(s)
    s.set_defaults(fn=cmd_demo)

    s = sub.add_parser("serve", help="start the local Triton on the repository (or the NGC container if TRITON_IMAGE)")
    s.add_argument("--repository", type=Path, default=DEFAULT_REPO)
    s.add_argument("--http-port", type=int, default=int(os.environ.get("HTTP_PORT", 8000)))
    s.add_argument("--grpc-port", type=int, default=int(os.environ.get("GRPC_PORT", 8001)))
    s.add_argument("--metrics-port", type=int, default=int(os.environ.get("METRICS_PORT", 8002)))
    s.add_argument("--model-control", default="none", choices=("none", "explicit"))
    s.add_argument("--strict", action="store_true", help="fail (exit 1) when any model of the repository does not load "
                                                        "(default: serve the others and name it)")
    s.add_argument("--open-admin-apis", action="store_true",
                   help="open shared memory, model load/unload, logging and trace to every local process (unsafe)")
    s.add_argument("--open-http-inference", action="store_true",
                   help="HTTP inference without the infer key (Triton 2.51's JSON parser is crashable by one request)")
    s.set_defaults(fn=cmd_serve)

    s = sub.add_parser("unpublish", help="remove models from the repository, atomically (model names or a spec)")
    s.add_argument("models", nargs="+", help="model folder names (digits_int8), or a spec name/path: all its variants")
    s.add_argument("--repository", type=Path, default=DEFAULT_REPO)
    s.add_argument("--build-dir", type=Path, default=DEFAULT_BUILD)
    s.set_defaults(fn=cmd_unpublish)

    s = sub.add_parser("infer", help="send one batch (.npz or .json) to a served model")
    s.add_argument("model")
    s.add_argument("--input", type=Path, required=True)
    s.add_argument("--url", default=None)
    s.add_argument("--protocol", default="http", choices=("http", "grpc"))
    s.add_argument("--timeout-s", type=float, default=30.0)
    s.add_argument("--allow-nonfinite", action="store_true", help="send NaN/Inf inputs (refused by default)")
    s.add_argument("--cache", action="store_true", help="answer from the shared Redis cache when it holds this request")
    s.add_argument("--cache-url", default=None, help="redis://:password@host:port/0; prefer $TCK_REDIS_URL (a password "
                                                     "on the command line lands in the shell's history)")
    s.add_argument("--cache-ttl-s", type=float, default=3600.0, help="how long the answer may be served from the cache")
    s.add_argument("--cache-ignore-inputs", default="", help="inputs left out of the cache key, comma-separated "
                                                             "(as the spec's [cache] ignore_inputs)")
    s.set_defaults(fn=cmd_infer)

    s = sub.add_parser("compare", help="Polygraphy comparison of built variants on held-out inputs")
    s.add_argument("--model", default="digits")
    s.add_argument("--variants", default="fp32,int8_qdq", help="first is the reference: fp32,fp16,int8_qdq,int8_cpu")
    s.add_argument("--atol", type=float, default=0.5)
    s.add_argument("--rtol", type=float, default=0.5)
    s.add_argument("--samples", type=int, default=8)
    s.add_argument("--build-dir", type=Path, default=DEFAULT_BUILD)
    s.set_defaults(fn=cmd_compare)
