"""The build job: a pipeline of stages, each with a status and its run time, and a JSON report.

    model -> onnx (checked against PyTorch) -> fp16 / int8 (calibrated Q/DQ + CPU twin)
          -> accuracy gate -> ONNX Runtime timing -> TensorRT plan (GPU nodes) -> publish

Publishing is all-or-nothing: variants are staged beside the repository and swapped in only when
every requested variant passed its gate; otherwise the published repository is left as it was.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from build_engines import data, export, isa, precision, repository
from build_engines.errors import BuildError, ToolMissing
from build_engines.gate import Evidence, GateResult, gate
from build_engines.repository import ServingConfig, Staging
from build_engines.runtime import environment, ort_session, run_batched, time_session
from build_engines.spec import ModelSpec, resolve_callable

log = logging.getLogger(__name__)
PRECISIONS = ("fp32", "fp16", "int8")


class Status(str, enum.Enum):
    PASSED = "PASSED"
    SKIPPED = "SKIPPED"
    FAILED = "FAILED"


@dataclass
class Step:
    name: str
    status: Status
    seconds: float
    detail: str = ""


@dataclass
class BuildResult:
    spec: ModelSpec
    work_dir: Path
    steps: list[Step] = field(default_factory=list)
    artifacts: dict[str, dict[str, Path]] = field(default_factory=dict)  # variant -> {"qdq"|"cpu"|"onnx": path}
    gates: dict[str, GateResult] = field(default_factory=dict)
    timings: dict[str, dict] = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    export_check: dict = field(default_factory=dict)
    published: list[str] = field(default_factory=list)
    speed: dict[str, dict[str, float]] = field(default_factory=dict)  # variant -> {batch_N: samples/s over FP32's}
    report_path: Path | None = None

    def named_artifacts(self):
        """(name, precision, kind, path) per artifact; the name is the precision, or precision_kind
        for the extra artifacts (int8_qdq, int8_cpu, fp32_plan)."""
        for v, arts in self.artifacts.items():
            for kind, path in arts.items():
                yield (v if kind == "onnx" else f"{v}_{kind}"), v, kind, path

    @property
    def ok(self) -> bool:
        return all(s.status is not Status.FAILED for s in self.steps)


def model_name(spec: ModelSpec, variant: str) -> str:
    return f"{spec.name}_{variant}"


def artifact_for(result: BuildResult, variant: str, target: str) -> Path:
    """Which ONNX a target serves: the CPU twin on CPU, the TensorRT-style Q/DQ graph on GPU nodes."""
    arts = result.artifacts[variant]
    if variant == "int8":
        return arts["cpu"] if target == "cpu" else arts["qdq"]
    return arts["onnx"]


def _fid(g: GateResult) -> str:
    f = g.details.get("fp32", {})
    agree = f"agreement {f['agreement']:.4f}" if "agreement" in f else f"cosine {f.get('cosine_mean', 0):.4f}"
    return f"{g.value:.4g} ({agree}, rel err {f.get('relative_error', 0):.3f})"


class Pipeline:
    def __init__(self, spec: ModelSpec, work_dir: Path, precisions=PRECISIONS, calibration_method: str | None = None,
                 progress: Callable[[str], None] | None = None):
        unknown = [p for p in precisions if p not in PRECISIONS]
        if unknown:
            raise BuildError(f"unknown precision {unknown}; use a comma list of {','.join(PRECISIONS)}")
        self.spec, self.work_dir = spec, Path(work_dir)
        self.precisions = ("fp32", *[p for p in precisions if p != "fp32"])  # FP32 is the reference
        self.settings = precision.CalibrationSettings(
            method=calibration_method or spec.calibration_method, ops=spec.quantize_ops)
        self.progress = progress or (lambda msg: log.info(msg))
        self.result = BuildResult(spec, self.work_dir)

    def _step(self, name: str, fn: Callable[[], str | None], required: bool = True) -> None:
        self.progress(f"[{self.spec.name}] {name} ...")
        t0 = time.perf_counter()
        try:
            detail = fn() or ""
            status = Status.PASSED
        except ToolMissing as e:
            detail, status = str(e), Status.SKIPPED
        except BuildError as e:
            self.result.steps.append(Step(name, Status.FAILED, time.perf_counter() - t0, str(e)))
            self.progress(f"[{self.spec.name}] {name} FAILED ({time.perf_counter() - t0:.1f} s)")
            raise
        secs = time.perf_counter() - t0
        self.result.steps.append(Step(name, status, secs, detail))
        self.progress(f"[{self.spec.name}] {name} {status.value} ({secs:.1f} s){': ' + detail if detail else ''}")

    def run(self, repository_dir: Path | None = None, target: str = "cpu", serving: ServingConfig | None = None,
            tensorrt: bool = True, bench: bool = True) -> BuildResult:
        spec, w, r = self.spec, self.work_dir, self.result
        w.mkdir(parents=True, exist_ok=True)
        serving = serving or ServingConfig.from_spec(spec)
        state: dict = {}

        def load_model():
            state["model"] = spec.make_model(w)
            state["eval"] = spec.evaluation_batches()
            state["lengths"] = data.check_lengths(spec, state["eval"])
            lengths = f", checked at lengths {list(state['lengths'])}" if state["lengths"] else ""
            return (f"{sum(p.numel() for p in state['model'].parameters()):,} parameters, "
                    f"{data.samples(state['eval'])} held-out samples in {len(state['eval'])} batch(es){lengths}")

        def to_onnx():
            ev = state["eval"][0][0]
            sample = {k: v[:2] for k, v in ev.items()}
            path = export.onnx_from_torch(state["model"], spec, sample, w / "fp32.onnx")
            checks = [{k: v[:1] for k, v in ev.items()}, {k: v[:min(len(v), serving.opt_batch * 2)] for k, v in ev.items()}]
            checks += [data.at_length(spec, state["eval"], n, 4) for n in state["lengths"]]
            checks += [feed for feed, _ in state["eval"][1:]]
            r.export_check = export.check_onnx_against_torch(state["model"], path, spec, checks)
            r.artifacts["fp32"] = {"onnx": path}
            return f"opset {spec.opset}, worst |diff| vs PyTorch {r.export_check['max_abs_diff']:.2g}"

        def kept_fp32() -> tuple[str, ...]:
            if not spec.keep_fp32_nodes:
                return ()
            import onnx
            return tuple(spec.resolve("keep_fp32_nodes")(onnx.load(str(w / "fp32.onnx"))))

        def to_fp16():
            r.artifacts["fp16"] = {"onnx": precision.fp16_onnx_from_onnx(w / "fp32.onnx", w / "fp16.onnx")}

        def to_int8():
            settings = replace(self.settings, exclude_nodes=kept_fp32())
            feeds = precision.collect_calibration(spec.resolve("calibration")() if spec.calibration else None,
                                                  [t.name for t in spec.inputs])
            cache, hit = precision.calibrate(w / "fp32.onnx", feeds, settings, w / "calib")
            qdq = precision.qdq_onnx_from_onnx(w / "fp32.onnx", w / "int8_qdq.onnx", cache, settings)
            cpu_isa = isa.int8_isa()
            recipe = isa.cpu_recipe(cpu_isa, spec.cpu_recipe)
            if spec.cpu_int8 == "dynamic":
                cpu = precision.dynamic_int8_onnx_from_onnx(w / "fp32.onnx", w / "int8_cpu.onnx", settings, recipe)
            else:
                cpu = precision.cpu_int8_onnx_from_onnx(w / "fp32.onnx", w / "int8_cpu.onnx", cache, settings, recipe)
            r.artifacts["int8"] = {"qdq": qdq, "cpu": cpu}
            r.calibration = {"method": settings.method, "batches": len(feeds),
                             "samples": int(sum(len(next(iter(f.values()))) for f in feeds)),
                             "cache": cache.name, "cache_hit": hit, "ops": list(settings.ops),
                             "excluded_nodes": list(settings.exclude_nodes),
                             "percentile": settings.percentile if settings.method == "percentile" else None,
                             "num_bins": settings.num_bins if settings.method != "minmax" else None,
                             "qdq": precision.qdq_summary(qdq), "cpu_twin": precision.qdq_summary(cpu),
                             "cpu_int8": spec.cpu_int8, "int8_isa": cpu_isa, "cpu_recipe": recipe,
                             "cpu_recipe_requested": spec.cpu_recipe}
            return (f"{settings.method} on {r.calibration['samples']} samples ({'cache hit' if hit else 'calibrated'}); "
                    f"CPU recipe {recipe} ({'8-bit' if recipe == 'full' else '7-bit'} weights) for {cpu_isa}")

        def run_gates():
            batches, labels = state["eval"], data.labels_of(state["eval"])
            probe = data.probe(batches, 16)
            sized = {n: data.at_length(spec, batches, n) for n in state["lengths"]}

            def outputs(sess, feeds) -> np.ndarray:
                return np.concatenate([run_batched(sess, f)[0] for f in feeds])

            fp32 = ort_session(w / "fp32.onnx")
            ref = outputs(fp32, [f for f, _ in batches])
            ref_at = {n: outputs(fp32, [f]) for n, f in sized.items()}
            refused, reported = [], []
            for name, v, kind, path in r.named_artifacts():
                # what serves it: the CPU session's kernels; a TensorRT artifact: exact Q/DQ arithmetic
                sess = ort_session(path, exact=kind == "qdq")
                ev = Evidence(
                    outputs=outputs(sess, [f for f, _ in batches]),
                    exact=outputs(ort_session(path, exact=True), [f for f, _ in batches]) if kind == "cpu" else None,
                    alone=outputs(sess, [{k: x[i:i + 1] for k, x in probe.items()} for i in range(len(next(iter(probe.values()))))]),
                    batched=outputs(sess, [probe]),
                    lengths={n: (outputs(sess, [f]), ref_at[n]) for n, f in sized.items()} if v != "fp32" else {},
                )
                g = gate(spec, name, ev, ref, labels, r.calibration.get("int8_isa", isa.int8_isa()),
                         r.calibration.get("cpu_recipe", "") if kind == "cpu" else "")
                r.gates[name] = g
                if not g.passed:
                    # only what this target publishes must pass; the rest is reported
                    (refused if path == artifact_for(r, v, target) else reported).append(g)
            if refused:
                refused[0].raise_if_refused()
            note = "".join(f"; {g.variant} refused (not published for target {target}: {'; '.join(g.reasons)})"
                           for g in reported)
            if not spec.gated:
                note += "; speed only, not gated: the spec's data is random ([data] kind = \"random\")"
            return ", ".join(f"{k} {_fid(g)}" for k, g in r.gates.items()) + note

        def run_bench():
            feed = state["eval"][0][0]
            threads = serving.threads_per_instance
            for name, _, _, path in r.named_artifacts():
                sess = ort_session(path, threads=threads)
                r.timings[name] = {f"batch_{b}": time_session(sess, {k: x[:b] for k, x in feed.items()}, budget_s=0.5)
                                   for b in sorted({1, min(serving.opt_batch, data.samples(state["eval"][:1]))})}
            verdicts = [self._speed_verdict(name, target) for name in r.timings if name != "fp32"]
            return " ".join([f"ONNX Runtime, {threads} thread(s).", *(v for v in verdicts if v)])

        def compile_plans():
            from build_engines.tensorrt import plan_from_onnx
            for v in self.precisions:
                src = artifact_for(r, v, "tensorrt_plan")
                plan_from_onnx(src, w / f"{v}.plan", spec, serving, w / "timing.cache")
                r.artifacts[v]["plan"] = w / f"{v}.plan"

        def publish():
            with Staging(repository_dir) as staging:
                for v in self.precisions:
                    name = model_name(spec, v)
                    params = {"precision": v, "source_onnx": artifact_for(r, v, target).name}
                    if v == "int8" and target == "cpu":  # the served model checks its machine at load
                        params |= {"int8_recipe": r.calibration["cpu_recipe"], "int8_gated_isa": r.calibration["int8_isa"]}
                    if target == "tensorrt_plan":
                        meta = json.loads((w / f"{v}.plan.json").read_text())
                        params["tensorrt_version"] = meta["tensorrt_version"]
                        files = {"model.plan": w / f"{v}.plan"}
                    else:
                        files = {"model.onnx": artifact_for(r, v, target)}
                    cfg = repository.model_config(name, spec, target, serving, params)
                    repository.write_model_dir(staging.model_dir(name), cfg, files)
                if spec.extra.get("text_ensemble"):
                    self._stage_text_ensemble(staging, serving)
                r.published = staging.publish()
            return f"{', '.join(r.published)} -> {repository_dir} ({target})"

        try:
            self._step("load model", load_model)
            self._step("export onnx", to_onnx)
            if "fp16" in self.precisions:
                self._step("fp16", to_fp16)
            if "int8" in self.precisions:
                self._step("int8 calibrate + Q/DQ", to_int8)
            self._step("accuracy gate", run_gates)
            if bench:
                self._step("onnxruntime timing", run_bench)
            if tensorrt or target == "tensorrt_plan":
                self._step("tensorrt plan", compile_plans)
                if target == "tensorrt_plan" and self.result.steps[-1].status is Status.SKIPPED:
                    raise ToolMissing(f"target tensorrt_plan needs TensorRT: {self.result.steps[-1].detail}")
            if repository_dir is not None:
                self._step("publish", publish)
        finally:
            self.write_report(serving, target)
        return r

    def _speed_verdict(self, name: str, target: str) -> str:
        """Plain words when a variant is slower than FP32 at some batch on this CPU; in the build report."""
        r = self.result
        ratios = {k: r.timings[name][k]["samples_per_s"] / r.timings["fp32"][k]["samples_per_s"] for k in r.timings[name]}
        r.speed[name] = ratios
        if all(x >= 1.0 for x in ratios.values()):
            return ""
        where = ", ".join(f"{x:.2f}x ({'faster' if x >= 1.0 else 'SLOWER'}) at {k.replace('_', ' ')}"
                          for k, x in ratios.items())
        served = name in ("fp16", "int8_cpu") and target == "cpu"
        why = (" Published because --precisions includes it: where it is slower, it costs more per request than FP32."
               if served else " (The TensorRT artifact: its CPU speed says nothing about TensorRT's.)"
               if name == "int8_qdq" else "")
        return f"{name} vs FP32 on this CPU ({isa.int8_isa()}): {where}.{why}"

    def _stage_text_ensemble(self, staging: Staging, serving: ServingConfig) -> None:
        """Tokenizer model + one ensemble per variant, so clients send raw strings."""
        spec = self.spec
        tok_name = f"{spec.name}_tokenizer"
        src = Path(resolve_callable(spec.extra.get("tokenizer_json"), "extra.tokenizer_json", spec.path)())
        cfg = repository.tokenizer_config(tok_name, serving, int(spec.extra.get("max_length", 128)),
                                          spec.extra.get("buckets", (16, 32, 64, 128)))
        repository.write_model_dir(staging.model_dir(tok_name), cfg, {"tokenizer.json": src / "tokenizer.json"},
                                   python_model=repository.TOKENIZER_MODEL)
        for v in self.precisions:
            ens = f"{spec.name}_text_{v}"
            repository.write_model_dir(staging.model_dir(ens), repository.ensemble_config(
                ens, tok_name, model_name(spec, v), spec, serving.max_batch_size), {})

    def write_report(self, serving: ServingConfig, target: str) -> Path:
        r = self.result
        def size(p: Path) -> int:
            return p.stat().st_size if p.exists() else 0
        variants = {}
        for name, v, _, path in r.named_artifacts():
            g = r.gates.get(name)
            variants[name] = {"precision": v, "artifact": str(path), "bytes": size(path),
                              "gate": g.as_dict() if g else None, "onnxruntime": r.timings.get(name),
                              "speed_over_fp32": r.speed.get(name)}
        report = {
            "kind": "build_report", "model": self.spec.name, "spec": str(self.spec.path),
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "ok": r.ok, "target": target, "serving": serving.__dict__ | {"preferred_batch_sizes": list(serving.preferred_batch_sizes)},
            "steps": [{"name": s.name, "status": s.status.value, "seconds": round(s.seconds, 3), "detail": s.detail} for s in r.steps],
            "export_check": r.export_check, "calibration": r.calibration, "variants": variants,
            "published": r.published, "environment": environment(),
        }
        path = self.work_dir / "build_report.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=2, default=str))
        tmp.replace(path)
        r.report_path = path
        return path



def ensure_published(model: str, repository: Path, build_dir: Path, precisions=("fp32", "fp16", "int8"),
                     progress: Callable[[str], None] | None = None) -> None:
    """Build and publish the spec's variants unless the repository already has them."""
    from build_engines.spec import load_spec
    spec = load_spec(model)
    if all((Path(repository) / model_name(spec, p) / "config.pbtxt").exists() for p in precisions):
        return
    say = progress or (lambda msg: log.info(msg))
    say(f"building {model} ({','.join(precisions)}) into {repository} ...")
    Pipeline(spec, Path(build_dir) / spec.name, precisions, progress=say).run(repository, bench=False, tensorrt=False)
