"""Held-out data as the build uses it: batches of possibly different shapes, and the same samples
cut or padded to the lengths a dynamic axis must be checked at (shortest, typical, longest)."""

from __future__ import annotations

import numpy as np

from build_engines.spec import ModelSpec

Batch = tuple[dict[str, np.ndarray], "np.ndarray | None"]


def dynamic_axes(spec: ModelSpec) -> dict[str, list[int]]:
    """Per input, the array axes (batch axis counted) that the spec declares -1."""
    return {t.name: [i + 1 for i, d in enumerate(t.shape) if d == -1] for t in spec.inputs if -1 in t.shape}


def check_lengths(spec: ModelSpec, batches: list[Batch]) -> tuple[int, ...]:
    """The lengths every dynamic axis is checked at: the spec's [export] dynamic_range, else the
    shortest, median and longest length in the evaluation data. () for a model without dynamic axes."""
    axes = dynamic_axes(spec)
    if not axes:
        return ()
    if spec.dynamic_range:
        return tuple(sorted(set(spec.dynamic_range)))
    seen = [feed[name].shape[ax] for feed, _ in batches for name, a in axes.items() for ax in a]
    return tuple(sorted({min(seen), int(np.median(seen)), max(seen)}))


def _resize(spec: ModelSpec, feed: dict[str, np.ndarray], length: int) -> dict[str, np.ndarray]:
    """Every dynamic axis cut to `length`, or zero-padded to it (zero pads token ids and attention
    masks, and is silence for signals)."""
    axes = dynamic_axes(spec)
    out = {}
    for name, x in feed.items():
        for ax in axes.get(name, ()):
            if x.shape[ax] >= length:
                x = np.take(x, np.arange(length), axis=ax)
            else:
                pad = [(0, 0)] * x.ndim
                pad[ax] = (0, length - x.shape[ax])
                x = np.pad(x, pad)
        out[name] = np.ascontiguousarray(x)
    return out


def at_length(spec: ModelSpec, batches: list[Batch], length: int, n: int = 256) -> dict[str, np.ndarray]:
    """Up to n held-out samples with every dynamic axis at `length`: cut from samples at least that
    long (closest lengths first, so they stay in distribution); zero-padded only where none is."""
    axes = dynamic_axes(spec)
    name, ax = next((k, a[0]) for k, a in axes.items())

    def size(feed):
        return feed[name].shape[ax]
    order = sorted(batches, key=lambda b: (size(b[0]) < length, abs(size(b[0]) - length)))
    if size(order[0][0]) >= length:
        order = [b for b in order if size(b[0]) >= length]
    parts, have = [], 0
    for feed, _ in order:
        if have >= n:
            break
        take = {k: v[: n - have] for k, v in feed.items()}
        parts.append(_resize(spec, take, length))
        have += len(next(iter(take.values())))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def typical_feed(spec: ModelSpec, batches: list[Batch], batch: int) -> dict[str, np.ndarray]:
    """`batch` held-out samples at the data's typical (median) length, repeated if it has fewer."""
    lengths = check_lengths(spec, batches)
    feed = at_length(spec, batches, lengths[len(lengths) // 2], batch) if lengths else batches[0][0]
    reps = -(-batch // len(next(iter(feed.values()))))
    return {k: np.concatenate([v] * reps)[:batch] for k, v in feed.items()}


def probe(batches: list[Batch], n: int = 16) -> dict[str, np.ndarray]:
    """n samples that can form one batch: the first n-1 of the first batch and, last, its most extreme
    one (largest absolute input), the batch-mate that moves batch-dependent ranges the most."""
    feed = batches[0][0]
    first = next(iter(feed.values()))
    flat = np.abs(first.reshape(len(first), -1).astype(np.float64))
    idx = list(range(min(n - 1, len(first))))
    extreme = int(flat.max(axis=1).argmax())
    if extreme not in idx and len(first) > len(idx):
        idx.append(extreme)
    return {k: v[idx] for k, v in feed.items()}


def labels_of(batches: list[Batch]) -> np.ndarray | None:
    if any(labels is None for _, labels in batches):
        return None
    return np.concatenate([np.asarray(labels) for _, labels in batches])


def samples(batches: list[Batch]) -> int:
    return sum(len(next(iter(feed.values()))) for feed, _ in batches)
