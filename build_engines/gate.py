"""The gate: every variant is judged on held-out data before it may be published.

It asks four questions, each with the arithmetic that will actually serve the variant:
1. accuracy: the spec's metric against the labels (top-1) or FP32 (embedding), within the budget;
2. fidelity to FP32: top-1 agreement and relative output error (classification) or cosine and
   nearest-neighbour agreement (embeddings), on the data and at every checked length of a dynamic axis;
3. kernels: a CPU INT8 artifact is also compared with its own exact Q/DQ arithmetic; a gap is a
   kernel error (ONNX Runtime's integer kernels saturate on x86 CPUs without VNNI), named as such;
4. batch invariance: a sample's output alone and inside a batch of other samples must agree.
The TensorRT artifact is judged by exact Q/DQ arithmetic (what TensorRT computes), never by x86
integer kernels. A spec whose data is random (``[data] kind = "random"``) is measured, not gated.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from build_engines.errors import GateRefused, SpecError
from build_engines.isa import RECIPE_ENV, exact_on
from build_engines.runtime import ort_session, run_batched
from build_engines.spec import ModelSpec


@dataclass(frozen=True)
class Evidence:
    """What was measured for one variant (all arrays are outputs for the same samples)."""

    outputs: np.ndarray                  # the serving arithmetic, over the evaluation data
    exact: np.ndarray | None = None      # its exact Q/DQ arithmetic (CPU INT8 artifacts)
    alone: np.ndarray | None = None      # probe samples run one at a time ...
    batched: np.ndarray | None = None    # ... and together in one batch
    lengths: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # length -> (outputs, FP32)


@dataclass(frozen=True)
class GateResult:
    variant: str
    metric: str
    value: float          # top1: percent; embedding: mean cosine vs FP32
    reference: float      # FP32's value of the same metric
    loss: float           # top1: percentage points; embedding: 1 - mean cosine
    budget: float
    passed: bool
    details: dict
    reasons: tuple[str, ...] = ()   # why it was (or, not gated, would have been) refused
    fix: str = ""
    gated: bool = True              # False: random data, speed only

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def kernel_error(self) -> bool:
        return bool(self.details.get("kernel", {}).get("shortfalls"))

    def raise_if_refused(self) -> None:
        if not self.passed:
            raise GateRefused(self.variant, self.reasons, self.fix)


def outputs_of(path: Path, inputs: dict[str, np.ndarray], batch_size: int = 64, exact: bool = False) -> np.ndarray:
    return run_batched(ort_session(path, exact=exact), inputs, batch_size)[0]


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean() * 100.0)


def relative_error(outputs: np.ndarray, reference: np.ndarray) -> float:
    """Mean absolute difference over the mean absolute reference value."""
    scale = float(np.abs(reference).mean())
    return float(np.abs(outputs.astype(np.float64) - reference).mean() / scale) if scale else 0.0


def embedding_fidelity(emb: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Cosine of each embedding with its FP32 twin, and top-1 nearest-neighbour agreement."""
    a = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
    b = ref / np.linalg.norm(ref, axis=1, keepdims=True).clip(1e-12)
    cos = (a * b).sum(1)
    sa, sb = a @ a.T, b @ b.T
    np.fill_diagonal(sa, -np.inf)
    np.fill_diagonal(sb, -np.inf)
    agree = float((sa.argmax(1) == sb.argmax(1)).mean()) if len(a) > 1 else 1.0
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()), "nn_agreement": agree}


def fidelity(spec: ModelSpec, outputs: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    rel = relative_error(outputs, reference)
    if spec.metric == "top1":
        return {"agreement": float((outputs.argmax(1) == reference.argmax(1)).mean()), "relative_error": rel}
    return {**embedding_fidelity(outputs, reference), "relative_error": rel}


def shortfalls(spec: ModelSpec, fid: dict[str, float], against: str) -> list[str]:
    """The spec's fidelity thresholds this comparison misses, in words."""
    out = []
    if spec.metric == "top1":
        if fid["agreement"] < spec.agreement_min - 1e-12:
            out.append(f"top-1 agreement with {against} {fid['agreement']:.4f} < {spec.agreement_min}")
    else:
        if 1.0 - fid["cosine_mean"] > spec.budget + 1e-12:
            out.append(f"mean cosine with {against} {fid['cosine_mean']:.4f} < {1.0 - spec.budget:.4f}")
        if fid["nn_agreement"] < spec.nn_agreement_min - 1e-12:
            out.append(f"nearest-neighbour agreement with {against} {fid['nn_agreement']:.3f} < {spec.nn_agreement_min}")
    if spec.max_relative_error is not None and fid["relative_error"] > spec.max_relative_error:
        out.append(f"relative error vs {against} {fid['relative_error']:.4f} > {spec.max_relative_error}")
    return out


def _compare(spec: ModelSpec, outputs: np.ndarray, reference: np.ndarray, against: str) -> dict:
    fid = fidelity(spec, outputs, reference)
    return {**fid, "shortfalls": shortfalls(spec, fid, against)}


def gate(spec: ModelSpec, variant: str, evidence: Evidence, reference: np.ndarray, labels: np.ndarray | None,
         isa: str = "", recipe: str = "") -> GateResult:
    """Judge one variant; ``reference`` is FP32's output on the same samples as ``evidence.outputs``."""
    out = evidence.outputs
    details: dict = {"isa": isa, "recipe": recipe}
    reasons: list[str] = []
    if spec.metric == "top1":
        if labels is None:
            raise SpecError(f"{spec.path}: metric 'top1' needs labels from [data] evaluation")
        value, ref = top1(out, labels), top1(reference, labels)
        loss = ref - value
        if loss > spec.budget + 1e-9:
            reasons.append(f"top-1 {value:.2f} % vs FP32 {ref:.2f} % (loss {loss:.2f} pp > budget {spec.budget})")
    else:
        value, ref = embedding_fidelity(out, reference)["cosine_mean"], 1.0
        loss = 1.0 - value
    details["fp32"] = _compare(spec, out, reference, "FP32")
    reasons += details["fp32"]["shortfalls"]
    if spec.metric == "top1":
        details["top1_agreement_with_fp32"] = details["fp32"]["agreement"]
    else:
        details.update({k: details["fp32"][k] for k in ("cosine_mean", "cosine_min", "nn_agreement")})
        details["nn_agreement_min"] = spec.nn_agreement_min
    if evidence.lengths:
        details["lengths"] = {str(n): _compare(spec, o, r, f"FP32 at length {n}") for n, (o, r) in evidence.lengths.items()}
        reasons += [s for d in details["lengths"].values() for s in d["shortfalls"]]
    fix = ("try another calibration method (--calibration entropy|percentile), keep sensitive nodes in FP32 "
           "([quantization] keep_fp32_nodes), or relax [accuracy] in the spec")
    if evidence.exact is not None:
        details["exact"] = _compare(spec, evidence.exact, reference, "FP32")
        details["kernel"] = _compare(spec, out, evidence.exact, "its exact Q/DQ arithmetic")
        if details["kernel"]["shortfalls"]:
            graph = ("the graph itself is faithful (exact Q/DQ arithmetic meets every threshold)"
                     if not details["exact"]["shortfalls"] else "the graph itself also misses: "
                     + "; ".join(details["exact"]["shortfalls"]))
            reasons.append(f"kernel error on this CPU ({isa}): ONNX Runtime's integer kernels miss the graph's exact "
                           f"Q/DQ arithmetic ({'; '.join(details['kernel']['shortfalls'])}); {graph}")
            fix = (f"rebuild with 7-bit weights ([quantization] cpu_recipe = \"reduce_range\" or {RECIPE_ENV}=reduce_range)"
                   if recipe == "full" and not exact_on(isa) else
                   "serve this model's fp32 variant on this CPU (its integer kernels are not exact here)")
    if evidence.alone is not None and evidence.batched is not None:
        bi = details["batch_invariance"] = _compare(spec, evidence.batched, evidence.alone, "the same samples run alone")
        # every sample counts, not the mean: one request answered differently is the defect
        scale = float(np.abs(evidence.alone).mean()) or 1.0
        per = np.abs(evidence.batched.astype(np.float64) - evidence.alone).reshape(len(evidence.alone), -1).mean(1) / scale
        bi["worst_relative_error"] = float(per.max())
        if spec.max_relative_error is not None and bi["worst_relative_error"] > spec.max_relative_error:
            bi["shortfalls"].append(f"worst sample's relative error vs the same sample run alone "
                                    f"{bi['worst_relative_error']:.4f} > {spec.max_relative_error}")
        if spec.metric == "embedding" and 1.0 - bi["cosine_min"] > spec.budget + 1e-12:
            bi["shortfalls"].append(f"worst sample's cosine with itself run alone {bi['cosine_min']:.4f} < "
                                    f"{1.0 - spec.budget:.4f}")
        if details["batch_invariance"]["shortfalls"]:
            reasons.append("not batch-invariant (its answer depends on what the request is batched with): "
                           + "; ".join(details["batch_invariance"]["shortfalls"]))
            fix = "use static INT8 ([quantization] cpu_int8 = \"static\"): its ranges do not depend on the batch"
    gated = spec.gated
    if not gated:
        details["not_gated"] = "speed only, not gated: the spec's data is random ([data] kind = \"random\")"
    return GateResult(variant, spec.metric, value, ref, loss, spec.budget, not reasons or not gated, details,
                      tuple(reasons), fix if reasons else "", gated)
