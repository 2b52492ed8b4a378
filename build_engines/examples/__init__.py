"""Example models with their data and specs (specs/*.toml), declared like any user model."""

from __future__ import annotations

from pathlib import Path
from typing import Callable


def trained_or_cached(work_dir: Path | None, filename: str, make: Callable, train: Callable):
    """A model factory's checkpoint cache: load ``work_dir/filename`` into ``make()`` if it is there and
    fits the current architecture, else ``train()`` and save it atomically (no half-written checkpoint)."""
    import torch

    ckpt = Path(work_dir) / filename if work_dir else None
    if ckpt is not None and ckpt.exists():
        model = make()
        try:
            model.load_state_dict(torch.load(ckpt, weights_only=True))
            return model.eval()
        except (RuntimeError, KeyError):
            pass                      # saved by an older version of the model: train the current one
    model = train()
    if ckpt is not None:
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(ckpt)
    return model
