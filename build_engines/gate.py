"""Accuracy gate: every variant is evaluated on held-out data against FP32 before it may be published."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from build_engines.errors import GateRefused, SpecError
from build_engines.runtime import ort_session, run_batched
from build_engines.spec import ModelSpec


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

    def as_dict(self) -> dict:
        return asdict(self)

    def raise_if_refused(self) -> None:
        if not self.passed:
            note = ""
            if "nn_agreement" in self.details:
                note = f"; nn agreement {self.details['nn_agreement']:.3f}, minimum {self.details['nn_agreement_min']:.3f}"
            raise GateRefused(self.variant, self.metric, self.reference, self.value, self.budget, self.loss, note)


def outputs_of(path: Path, inputs: dict[str, np.ndarray], batch_size: int = 64) -> np.ndarray:
    return run_batched(ort_session(path), inputs, batch_size)[0]


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean() * 100.0)


def embedding_fidelity(emb: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Cosine of each embedding with its FP32 twin, and top-1 nearest-neighbour agreement."""
    a = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
    b = ref / np.linalg.norm(ref, axis=1, keepdims=True).clip(1e-12)
    cos = (a * b).sum(1)
    sa, sb = a @ a.T, b @ b.T
    np.fill_diagonal(sa, -np.inf)
    np.fill_diagonal(sb, -np.inf)
    agree = float((sa.argmax(1) == sb.argmax(1)).mean())
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()), "nn_agreement": agree}


def gate(spec: ModelSpec, variant: str, outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None) -> GateResult:
    if spec.metric == "top1":
        if labels is None:
            raise SpecError(f"{spec.path}: metric 'top1' needs labels from [data] evaluation")
        value, ref = top1(outputs, labels), top1(reference, labels)
        agreement = float((outputs.argmax(1) == reference.argmax(1)).mean())
        loss = ref - value
        return GateResult(variant, "top1", value, ref, loss, spec.budget, loss <= spec.budget + 1e-9,
                          {"top1_agreement_with_fp32": agreement})
    fid = embedding_fidelity(outputs, reference)
    loss = 1.0 - fid["cosine_mean"]
    passed = loss <= spec.budget + 1e-12 and fid["nn_agreement"] >= spec.nn_agreement_min
    return GateResult(variant, "embedding", fid["cosine_mean"], 1.0, loss, spec.budget, passed,
                      {**fid, "nn_agreement_min": spec.nn_agreement_min})
