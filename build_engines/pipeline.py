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


from build_engines import export, precision, repository
from build_engines.errors import BuildError, ToolMissing
from build_engines.gate import GateResult, gate, outputs_of
from build_engines.repository import ServingConfig, Staging
from build_engines.runtime import environment, ort_session, time_session
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
            state["eval_inputs"], state["labels"] = spec.resolve("evaluation")()
            n = len(next(iter(state["eval_inputs"].values())))
            return f"{sum(p.numel() for p in state['model'].parameters()):,} parameters, {n} held-out samples"

        def to_onnx():
            ev = state["eval_inputs"]
            sample = {k: v[:2] for k, v in ev.items()}
            path = export.onnx_from_torch(state["model"], spec, sample, w / "fp32.onnx")
            checks = [{k: v[:1] for k, v in ev.items()}, {k: v[:min(len(v), serving.opt_batch * 2)] for k, v in ev.items()}]
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
            if spec.cpu_int8 == "dynamic":
                cpu = precision.dynamic_int8_onnx_from_onnx(w / "fp32.onnx", w / "int8_cpu.onnx", settings)
            else:
                cpu = precision.cpu_int8_onnx_from_onnx(w / "fp32.onnx", w / "int8_cpu.onnx", cache, settings)
            r.artifacts["int8"] = {"qdq": qdq, "cpu": cpu}
            r.calibration = {"method": settings.method, "batches": len(feeds),
                             "samples": int(sum(len(next(iter(f.values()))) for f in feeds)),
                             "cache": cache.name, "cache_hit": hit, "ops": list(settings.ops),
                             "excluded_nodes": list(settings.exclude_nodes),
                             "percentile": settings.percentile if settings.method == "percentile" else None,
                             "num_bins": settings.num_bins if settings.method != "minmax" else None,
                             "qdq": precision.qdq_summary(qdq), "cpu_twin": precision.qdq_summary(cpu),
                             "cpu_int8": spec.cpu_int8}
            return f"{settings.method} on {r.calibration['samples']} samples ({'cache hit' if hit else 'calibrated'})"

        def run_gates():
            ev, labels = state["eval_inputs"], state["labels"]
            ref = outputs_of(w / "fp32.onnx", ev)
            state["reference"] = ref
            refused, reported = [], []
            for name, v, _, path in r.named_artifacts():
                g = gate(spec, name, outputs_of(path, ev), ref, labels)
                r.gates[name] = g
                if not g.passed:
                    # only what this target publishes must pass; the rest is reported
                    (refused if path == artifact_for(r, v, target) else reported).append(g)
            if refused:
                refused[0].raise_if_refused()
            note = "".join(f"; {g.variant} refused (not published for target {target})" for g in reported)
            return ", ".join(f"{k} {g.value:.4g}" for k, g in r.gates.items()) + note

        def run_bench():
            ev = state["eval_inputs"]
            threads = serving.threads_per_instance
            for name, _, _, path in r.named_artifacts():
                sess = ort_session(path, threads=threads)
                r.timings[name] = {f"batch_{b}": time_session(sess, {k: x[:b] for k, x in ev.items()}, budget_s=0.5)
                                   for b in sorted({1, serving.opt_batch})}
            return f"ONNX Runtime, {threads} thread(s), batch 1 and {serving.opt_batch}"

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
                              "gate": g.as_dict() if g else None, "onnxruntime": r.timings.get(name)}
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

