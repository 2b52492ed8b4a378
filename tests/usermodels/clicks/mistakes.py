"""What a user's own code gets wrong, for the tests: each function fails as real code does."""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch

from clicks import build, calibration, evaluation


def factory_raises():
    raise FileNotFoundError("checkpoint ctr.pt not found")


def factory_needs_arg(size):      # a factory called with no argument (or work_dir only)
    return build()


def evaluation_raises():
    raise ValueError("could not parse clicks.csv line 3")


def evaluation_lists():
    feed, labels = evaluation()[0]
    return {k: v.tolist() for k, v in feed.items()}, labels


def evaluation_float64():
    return [({"dense": f["dense"].astype(np.float64), "tokens": f["tokens"]}, y) for f, y in evaluation()]


def calibration_raises():
    yield next(iter(calibration()))
    raise OSError("calibration shard 2 is unreadable")


if os.environ.get("CLICKS_SLOW_IMPORT"):     # a package that takes its time to import (a big checkpoint)
    print("clicks.mistakes: importing", file=sys.stderr, flush=True)
    time.sleep(float(os.environ["CLICKS_SLOW_IMPORT"]))


class _SubmoduleNamedMeta(torch.nn.Module):
    """Runs in eager PyTorch, but torch.onnx.export (torch 2.13) cannot decompose a submodule named
    ``meta`` (ConversionError: 'Node meta_weight target meta.weight references nonexistent attribute')."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        self.meta = torch.nn.Linear(2, 2)

    def forward(self, dense: torch.Tensor, tokens: torch.Tensor):
        logits, p = self.inner(dense, tokens)
        return self.meta(logits), p


def factory_unexportable(work_dir=None):
    return _SubmoduleNamedMeta(build(work_dir))
