"""Token padding shared by the build (build_engines.examples.minilm) and the served tokenizer model.

numpy only: it is copied beside the tokenizer's model.py as ``tck_padding.py`` (the NGC container
does not have this project installed), so the build and the server pad with the same code."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def bucket(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds n tokens (the largest when none does: the text was truncated)."""
    return next((b for b in sorted(buckets) if n <= b), max(buckets))


def pad(token_ids: Sequence[Sequence[int]], buckets: Sequence[int], pad_to: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """input_ids and attention_mask, padded to the bucket of the longest text (or to ``pad_to``):
    requests of similar length get equal shapes, so the encoder's dynamic batcher can join them."""
    length = pad_to or bucket(max(len(t) for t in token_ids), buckets)
    ids = np.zeros((len(token_ids), length), np.int64)
    mask = np.zeros((len(token_ids), length), np.int64)
    for i, t in enumerate(token_ids):
        n = min(len(t), length)
        ids[i, :n] = t[:n]
        mask[i, :n] = 1
    return ids, mask
