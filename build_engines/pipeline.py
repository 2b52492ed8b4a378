"""The build job: a pipeline of stages, each with a status and its run time, and a JSON report.

    model -> onnx (checked against PyTorch) -> fp16 / int8 (calibrated Q/DQ + CPU twin)
          -> accuracy gate -> ONNX Runtime timing -> TensorRT plan (GPU nodes) -> publish

Publishing is all-or-nothing: variants are staged beside the repository and swapped in only when
every requested variant passed its gate; otherwise the published repository is left as it was.
"""

from __future__ import annotations

import enum
import json
import logging
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import numpy as np

from build_engines import data, export, isa, precision, repository
from build_engines.errors import BuildError, Interrupted, SpecError, ToolMissing
from build_engines.gate import Evidence, GateResult, gate
from build_engines.records import Record
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
    coverage: dict[str, precision.Coverage] = field(default_factory=dict)  # artifact -> what it runs in 8/16 bits
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


def speed_word(ratio: float) -> str:
    """One word for a speed ratio over FP32, the same for every variant."""
    return "faster" if ratio > 1.0 else "slower" if ratio < 1.0 else "same"


def speed_text(ratios: dict[str, float]) -> str:
    """A variant's speed over FP32 at each timed batch, in the same words for every variant."""
    return ", ".join(f"{x:.2f}x ({speed_word(x)}) at {k.replace('_', ' ')}" for k, x in ratios.items())


def model_name(spec: ModelSpec, variant: str) -> str:
    return f"{spec.name}_{variant}"


def published_names(spec: ModelSpec) -> list[str]:
    """Every model folder a build of this spec can publish (its variants, and a text ensemble's parts)."""
    names = [model_name(spec, v) for v in PRECISIONS]
    if spec.extra.get("text_ensemble"):
        names += [f"{spec.name}_tokenizer"] + [f"{spec.name}_text_{v}" for v in PRECISIONS]
    return names


def artifact_for(result: BuildResult, variant: str, target: str) -> Path:
    """Which ONNX a target serves: the CPU twin on CPU, the TensorRT-style Q/DQ graph on GPU nodes."""
    arts = result.artifacts[variant]
    if variant == "int8":
        return arts["cpu"] if target == "cpu" else arts["qdq"]
    return arts["onnx"]


@dataclass
class Context:
    """What the steps share: the job's settings, and the model and data, loaded on first use."""

    spec: ModelSpec
    work_dir: Path
    target: str
    serving: ServingConfig
    repository: Path | None
    _model: object = None
    _eval: list | None = None

    @property
    def model(self):
        if self._model is None:
            self._model = self.spec.make_model(self.work_dir)
        return self._model

    @property
    def eval(self) -> list:
        if self._eval is None:
            self._eval = self.spec.evaluation_batches()
        return self._eval

    @property
    def lengths(self) -> tuple[int, ...]:
        return data.check_lengths(self.spec, self.eval)


@dataclass(frozen=True)
class StepDef:
    name: str        # what --only takes
    title: str       # what the progress lines and the report say
    method: str
    required: bool   # an optional step that cannot run here (a tool missing) is SKIPPED, not FAILED


STEPS = (
    StepDef("load", "load model", "_load", True),
    StepDef("export", "export onnx", "_export", True),
    StepDef("fp16", "fp16", "_fp16", True),
    StepDef("int8", "int8 calibrate + Q/DQ", "_int8", True),
    StepDef("gate", "accuracy gate", "_gate", True),
    StepDef("timing", "onnxruntime timing", "_timing", False),
    StepDef("tensorrt", "tensorrt plan", "_tensorrt", False),
    StepDef("publish", "publish", "_publish", True),
)


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
            if required:
                self.result.steps.append(Step(name, Status.FAILED, time.perf_counter() - t0, str(e)))
                raise
            detail, status = str(e), Status.SKIPPED
        except BuildError as e:
            self.result.steps.append(Step(name, Status.FAILED, time.perf_counter() - t0, str(e)))
            self.progress(f"[{self.spec.name}] {name} FAILED ({time.perf_counter() - t0:.1f} s)")
            raise
        except KeyboardInterrupt as e:    # Ctrl-C / SIGTERM: say which step, and that nothing was published
            self.result.steps.append(Step(name, Status.FAILED, time.perf_counter() - t0, "interrupted"))
            raise self._interrupted(e, f"step '{name}' of {self.spec.name}") from e
        secs = time.perf_counter() - t0
        self.result.steps.append(Step(name, status, secs, detail))
        self.progress(f"[{self.spec.name}] {name} {status.value} ({secs:.1f} s){': ' + detail if detail else ''}")

    def _interrupted(self, e: KeyboardInterrupt, where: str) -> Interrupted:
        repo, done = self.ctx.repository, self.result.published
        state = (f"{', '.join(done)} had been published to {repo}, whole, before it" if done else
                 f"the repository {repo} is as it was before (nothing published)" if repo is not None
                 else "nothing was published (--no-publish)")
        return Interrupted(getattr(e, "signum", signal.SIGINT), where, state)

    def run(self, repository_dir: Path | None = None, target: str = "cpu", serving: ServingConfig | None = None,
            tensorrt: bool = True, bench: bool = True, only: Sequence[str] | None = None) -> BuildResult:
        """Run the steps (``STEPS``) in order. ``only``: run just these steps (e.g. ``("int8", "gate")``),
        taking what earlier steps made from the work folder; the others are SKIPPED with the reason."""
        unknown = sorted(set(only or ()) - {st.name for st in STEPS})
        if unknown:
            raise BuildError(f"--only {','.join(unknown)}: unknown step; use {','.join(st.name for st in STEPS)}")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.ctx = Context(self.spec, self.work_dir, target, serving or ServingConfig.from_spec(self.spec), repository_dir)
        if only:
            self._resume(only)
        try:
            for st in STEPS:
                why = self._skip_reason(st, tensorrt, bench, only)
                if why:
                    self.result.steps.append(Step(st.title, Status.SKIPPED, 0.0, why))
                    continue
                try:
                    self._step(st.title, getattr(self, st.method), st.required)
                except KeyboardInterrupt as e:      # also between two steps (printing one's result)
                    if isinstance(e, Interrupted) and e.where:
                        raise
                    raise self._interrupted(e, f"step '{st.title}' of {self.spec.name}") from e
                if st.name == "tensorrt" and target == "tensorrt_plan" and self.result.steps[-1].status is Status.SKIPPED:
                    raise ToolMissing(f"target tensorrt_plan needs TensorRT: {self.result.steps[-1].detail}")
        finally:
            self.write_report(self.ctx.serving, target)
        return self.result

    def _skip_reason(self, st: "StepDef", tensorrt: bool, bench: bool, only: Sequence[str] | None) -> str:
        if only and st.name not in only:
            return f"not selected (--only {','.join(only)})"
        if st.name in ("fp16", "int8") and st.name not in self.precisions:
            return "not in --precisions"
        if st.name == "timing" and not bench:
            return "timing not asked for"
        if st.name == "tensorrt" and not (tensorrt or self.ctx.target == "tensorrt_plan"):
            return "TensorRT not asked for (--no-tensorrt)"
        if st.name == "publish" and self.ctx.repository is None:
            return "no repository to publish to (--no-publish)"
        return ""

    def _resume(self, only: Sequence[str]) -> None:
        """For --only: the artifacts and records earlier runs left in the work folder; refuses, naming
        the file and the step that makes it, when a selected step would lack its input."""
        w, r = self.work_dir, self.result
        files = {"fp32": {"onnx": "fp32.onnx"}, "fp16": {"onnx": "fp16.onnx"},
                 "int8": {"qdq": "int8_qdq.onnx", "cpu": "int8_cpu.onnx"}}
        maker = {"fp32": "export", "fp16": "fp16", "int8": "int8"}
        for v in self.precisions:
            arts = {k: w / f for k, f in files[v].items() if (w / f).exists()}
            if arts:
                r.artifacts[v] = arts
        report = w / BuildRecord.FILE
        if report.is_file():
            old = BuildRecord.read(report)
            r.calibration, r.export_check = old.calibration, old.export_check
        needs = {"fp16": ["fp32"], "int8": ["fp32"], "gate": list(self.precisions), "timing": list(self.precisions),
                 "tensorrt": list(self.precisions), "publish": list(self.precisions)}
        for step in only:
            for v in needs.get(step, []):
                if maker[v] in only:
                    continue
                missing = [f for f in files[v].values() if not (w / f).exists()]
                if missing:
                    raise BuildError(f"--only {','.join(only)}: step {step} needs {w / missing[0]}; run the "
                                     f"{maker[v]} step first (add it to --only, or build without --only)")
            if step in ("gate", "publish") and "int8" in self.precisions and "int8" not in only \
                    and not {"cpu_recipe", "int8_isa"} <= set(r.calibration):
                raise BuildError(f"--only {','.join(only)}: {report} does not record the INT8 recipe; "
                                 "add int8 to --only")

    def _load(self) -> str | None:
        c = self.ctx
        c.model  # noqa: B018 - the factory first: a bad one fails naming the field before any data loads
        for feed, _ in c.eval:          # the spec's tensors against the data and one PyTorch forward
            export.check_data_against_spec(self.spec, feed)
        export.check_torch_against_spec(c.model, self.spec, c.eval[0][0])
        lengths = f", checked at lengths {list(c.lengths)}" if c.lengths else ""
        return (f"{sum(p.numel() for p in c.model.parameters()):,} parameters, "
                f"{data.samples(c.eval)} held-out samples in {len(c.eval)} batch(es){lengths}")

    def _export(self) -> str | None:
        c, spec, w, r = self.ctx, self.spec, self.work_dir, self.result
        ev = c.eval[0][0]
        sample = {k: v[:2] for k, v in ev.items()}
        path = export.onnx_from_torch(c.model, spec, sample, w / "fp32.onnx")
        checks = [{k: v[:1] for k, v in ev.items()}, {k: v[:min(len(v), c.serving.opt_batch * 2)] for k, v in ev.items()}]
        checks += [data.at_length(spec, c.eval, n, 4) for n in c.lengths]
        checks += [feed for feed, _ in c.eval[1:]]
        r.export_check = export.check_onnx_against_torch(c.model, path, spec, checks)
        r.artifacts["fp32"] = {"onnx": path}
        return f"opset {spec.opset}, worst |diff| vs PyTorch {r.export_check['max_abs_diff']:.2g}"

    def _kept_fp32(self) -> tuple[str, ...]:
        c, spec, w, r = self.ctx, self.spec, self.work_dir, self.result
        if not spec.keep_fp32_nodes:
            return ()
        import onnx
        return tuple(spec.resolve("keep_fp32_nodes")(onnx.load(str(w / "fp32.onnx"))))

    def _ops_in_graph(self, onnx_path: Path) -> str:
        """[quantization] ops that this graph has: none is an error (INT8 would be FP32 by another
        name); those it lacks are said."""
        ops = self.spec.quantize_ops
        if not ops:
            return ""
        import onnx
        have = {n.op_type for n in onnx.load(str(onnx_path), load_external_data=False).graph.node}
        absent = [op for op in ops if op not in have]
        if len(absent) == len(ops):
            compute = sorted(have & set(precision.COMPUTE_OPS)) or sorted(have)
            raise SpecError(f"{self.spec.path}: field 'quantization.ops' is {list(ops)}: this model's graph has none "
                            f"of them, so nothing would be INT8; its compute ops are {', '.join(compute)}",
                            field="quantization.ops")
        return f" [quantization] ops not in this graph: {', '.join(absent)}." if absent else ""

    def _fp16(self) -> str | None:
        c, spec, w, r = self.ctx, self.spec, self.work_dir, self.result
        r.artifacts["fp16"] = {"onnx": precision.fp16_onnx_from_onnx(w / "fp32.onnx", w / "fp16.onnx")}
        r.coverage["fp16"] = precision.coverage_of(r.artifacts["fp16"]["onnx"], "fp16")
        return r.coverage["fp16"].text()

    def _int8(self) -> str | None:
        c, spec, w, r = self.ctx, self.spec, self.work_dir, self.result
        settings = replace(self.settings, exclude_nodes=self._kept_fp32())
        ops_note = self._ops_in_graph(w / "fp32.onnx")
        feeds = precision.collect_calibration(spec.calibration_batches(),
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
        r.coverage["int8_qdq"] = precision.coverage_of(qdq, "int8")
        r.coverage["int8_cpu"] = precision.coverage_of(cpu, "int8")
        return (f"{settings.method} on {r.calibration['samples']} samples ({'cache hit' if hit else 'calibrated'}); "
                f"CPU recipe {recipe} ({'8-bit' if recipe == 'full' else '7-bit'} weights) for {cpu_isa}; "
                f"{r.coverage['int8_cpu'].text()}{ops_note}")

    def _gate(self) -> str | None:
        c, spec, w, r = self.ctx, self.spec, self.work_dir, self.result
        batches, labels = c.eval, data.labels_of(c.eval)
        probe = data.probe(batches, 16)
        sized = {n: data.at_length(spec, batches, n) for n in c.lengths}

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
                (refused if path == artifact_for(r, v, c.target) else reported).append(g)
        if refused:
            refused[0].raise_if_refused()
        note = "".join(f"; {g.variant} refused (not published for target {c.target}: {'; '.join(g.reasons)})"
                       for g in reported)
        if not spec.gated:
            note += "; speed only, not gated: the spec's data is random ([data] kind = \"random\")"
        return ", ".join(f"{k} {_fid(g)}" for k, g in r.gates.items()) + note

    def _timing(self) -> str | None:
        c, spec, w, r = self.ctx, self.spec, self.work_dir, self.result
        feed = c.eval[0][0]
        threads = c.serving.threads_per_instance
        for name, _, _, path in r.named_artifacts():
            sess = ort_session(path, threads=threads)
            r.timings[name] = {f"batch_{b}": time_session(sess, {k: x[:b] for k, x in feed.items()}, budget_s=0.5)
                               for b in sorted({1, min(c.serving.opt_batch, data.samples(c.eval[:1]))})}
        verdicts = [self._speed_verdict(name, c.target) for name in r.timings if name != "fp32"]
        return " ".join([f"ONNX Runtime, {threads} thread(s).", *(v for v in verdicts if v)])

    def _tensorrt(self) -> str | None:
        c, spec, w, r = self.ctx, self.spec, self.work_dir, self.result
        from build_engines.tensorrt import plan_from_onnx
        for v in self.precisions:
            src = artifact_for(r, v, "tensorrt_plan")
            plan_from_onnx(src, w / f"{v}.plan", spec, c.serving, w / "timing.cache")
            r.artifacts[v]["plan"] = w / f"{v}.plan"

    def _publish(self) -> str | None:
        c, spec, w, r = self.ctx, self.spec, self.work_dir, self.result
        for v in self.precisions:
            name = next(n for n, pv, _, path in r.named_artifacts() if pv == v and path == artifact_for(r, v, c.target))
            if name not in r.gates or not r.gates[name].passed:
                raise BuildError(f"publish: {name} has no passing gate verdict in this run; run the gate step too "
                                 f"(--only ...,gate,publish)")
        with Staging(c.repository) as staging:
            for v in self.precisions:
                name = model_name(spec, v)
                params = {"precision": v, "source_onnx": artifact_for(r, v, c.target).name,
                          "source_sha256": file_digest(artifact_for(r, v, c.target))}
                if v == "int8" and c.target == "cpu":  # the served model checks its machine at load
                    params |= {"int8_recipe": r.calibration["cpu_recipe"], "int8_gated_isa": r.calibration["int8_isa"]}
                if c.target == "tensorrt_plan":
                    meta = json.loads((w / f"{v}.plan.json").read_text())
                    params["tensorrt_version"] = meta["tensorrt_version"]
                    files = {"model.plan": w / f"{v}.plan"}
                else:
                    files = {"model.onnx": artifact_for(r, v, c.target)}
                cfg = repository.model_config(name, spec, c.target, c.serving, params)
                repository.write_model_dir(staging.model_dir(name), cfg, files)
            if spec.extra.get("text_ensemble"):
                self._stage_text_ensemble(staging, c.serving)
            try:
                r.published = staging.publish()
            except KeyboardInterrupt:
                r.published = staging.published     # [] unless the swap was whole when it came
                raise
        return f"{', '.join(r.published)} -> {c.repository} ({c.target})"

    def _speed_verdict(self, name: str, target: str) -> str:
        """Every variant's speed against FP32 at each timed batch, in the same words faster or slower."""
        r = self.result
        ratios = {k: r.timings[name][k]["samples_per_s"] / r.timings["fp32"][k]["samples_per_s"] for k in r.timings[name]}
        r.speed[name] = ratios
        where = speed_text(ratios)
        served = name in ("fp16", "int8_cpu") and target == "cpu"
        slower = any(x < 1.0 for x in ratios.values())
        why = (" Published because --precisions includes it: where it is slower, it costs more per request than FP32."
               if served and slower else " (The TensorRT artifact: its CPU speed says nothing about TensorRT's.)"
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
        variants = {name: VariantRecord(v, str(path), path.stat().st_size if path.exists() else 0, r.gates.get(name),
                                        r.timings.get(name), r.speed.get(name), r.coverage.get(name))
                    for name, v, _, path in r.named_artifacts()}
        rec = BuildRecord(model=self.spec.name, spec=str(self.spec.path), ok=r.ok, target=target, serving=serving,
                          steps=[Step(s.name, s.status, round(s.seconds, 3), s.detail) for s in r.steps],
                          export_check=r.export_check, calibration=r.calibration, variants=variants,
                          published=r.published, environment=environment())
        r.report_path = rec.write(self.work_dir / BuildRecord.FILE)
        if r.ok and r.published:      # the spec its published models came from: a later failed build keeps it
            ref = self.work_dir / PUBLISHED_FROM
            tmp = ref.with_suffix(".tmp")
            tmp.write_text(json.dumps({"spec": str(self.spec.path), "published": r.published}))
            tmp.replace(ref)
        return r.report_path


PUBLISHED_FROM = "published_from.json"   # build/<model>/: the spec of the last build that published


@dataclass
class VariantRecord:
    precision: str
    artifact: str
    bytes: int
    gate: GateResult | None
    onnxruntime: dict | None        # in-process timing by batch
    speed_over_fp32: dict[str, float] | None
    coverage: precision.Coverage | None = None   # ops and weights in reduced precision (None: FP32)


@dataclass(kw_only=True)
class BuildRecord(Record):
    """build/<model>/build_report.json: what one `make engines` did, judged and published."""

    KIND: ClassVar[str] = "build_report"
    SCHEMA: ClassVar[int] = 3
    WRITER: ClassVar[str] = "make engines MODEL=<model>"
    FILE: ClassVar[str] = "build_report.json"

    model: str
    spec: str
    ok: bool
    target: str
    serving: ServingConfig
    steps: list[Step]
    export_check: dict
    calibration: dict
    variants: dict[str, VariantRecord]
    published: list[str]

    def served_accuracy(self, precision: str) -> float | None:
        """The gate's accuracy of the artifact this build serves as ``precision`` on its target."""
        kind = ("cpu" if self.target == "cpu" else "qdq") if precision == "int8" else "onnx"
        name = precision if kind == "onnx" else f"{precision}_{kind}"
        v = self.variants.get(name)
        return v.gate.value if v and v.gate else None


def file_digest(path: Path) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def check_served_matches_build(spec: ModelSpec, repository: Path, build_dir: Path, precisions: Sequence[str]) -> None:
    """The model a repository serves is the one build/ holds: each published config carries the digest of
    the ONNX it was published from; a rebuild that failed or changed build/ since is refused in one line."""
    from build_engines.repository import read_config
    for v in precisions:
        name = model_name(spec, v)
        params = {k: x.string_value for k, x in read_config(Path(repository) / name).parameters.items()}
        src = Path(build_dir) / spec.name / params.get("source_onnx", "")
        want = params.get("source_sha256")
        if not want or not src.is_file() or file_digest(src) != want:
            why = ("was published before artifacts carried a digest" if not want else
                   f"{src} is missing" if not src.is_file() else f"{src} changed since it was published")
            raise BuildError(f"{Path(repository) / name} is not what build/ holds ({why}): rebuild and publish it "
                             f"with `make engines MODEL={spec.name}` before measuring")


def ensure_published(model: str, repository: Path, build_dir: Path, precisions=("fp32", "fp16", "int8"),
                     progress: Callable[[str], None] | None = None) -> None:
    """Build and publish the spec's variants unless the repository already has them; refuse to measure
    a served model that is not the built one."""
    from build_engines.spec import load_spec
    spec = load_spec(model)
    if all((Path(repository) / model_name(spec, p) / "config.pbtxt").exists() for p in precisions):
        check_served_matches_build(spec, repository, build_dir, precisions)
        return
    say = progress or (lambda msg: log.info(msg))
    say(f"building {model} ({','.join(precisions)}) into {repository} ...")
    Pipeline(spec, Path(build_dir) / spec.name, precisions, progress=say).run(repository, bench=False, tensorrt=False)
