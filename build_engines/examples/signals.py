"""A 1-D conv classifier over variable-length signals: sine, square and sawtooth waves of random
frequency, phase, amplitude and length (32..256 samples), with noise. The data are synthetic,
generated here with a fixed seed (no real variable-length data ships in a package); the model is
trained on them in the build (~5 s on 2 cores) and cached in the build's work folder.

It exists to exercise what fixed-shape models do not: a dynamic time axis in the export check,
calibration batches of different lengths, the gate at several lengths, and INT8 whose integer
kernels saturate without VNNI.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from build_engines.examples import trained_or_cached

SEED = 0
LENGTHS = (32, 48, 64, 96, 128, 160, 192, 256)
CLASSES = ("sine", "square", "sawtooth")


class SignalCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, 32, 7, padding=3), nn.ReLU(),
            nn.Conv1d(32, 64, 5, padding=2), nn.ReLU(),
            nn.Conv1d(64, 64, 5, padding=2), nn.ReLU(),
        )
        self.head = nn.Linear(64, len(CLASSES))

    def forward(self, signal: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(signal).mean(dim=-1))


def _wave(kind: int, n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / n
    phase = 2 * np.pi * (rng.uniform(2, 8) * t + rng.uniform())
    base = (np.sin(phase), np.sign(np.sin(phase)), 2 * ((phase / (2 * np.pi)) % 1.0) - 1)[kind]
    return (rng.uniform(0.5, 2.0) * base + rng.normal(0, 0.1, n)).astype(np.float32)


@lru_cache(maxsize=1)
def _dataset() -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Per split, a list of (signals [n, 1, L], labels [n]) batches, one length per batch."""
    rng = np.random.default_rng(SEED)
    out: dict[str, list] = {"train": [], "test": []}
    for split, per_length in (("train", 96), ("test", 256)):
        for n in LENGTHS:
            y = rng.integers(0, len(CLASSES), per_length)
            x = np.stack([_wave(int(k), n, rng) for k in y])[:, None, :]
            out[split].append((x, y.astype(np.int64)))
    return out


def train(epochs: int = 40, seed: int = SEED) -> SignalCNN:
    torch.manual_seed(seed)
    model = SignalCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batches = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in _dataset()["train"]]
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for i in torch.randperm(len(batches), generator=g).tolist():
            x, y = batches[i]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


def trained_model(work_dir: Path | None = None) -> SignalCNN:
    """Model factory for the spec: loads the cached checkpoint or trains one."""
    return trained_or_cached(work_dir, "signal_cnn.pt", SignalCNN, train)


def calibration_batches():
    """Training signals only, one batch per length (the batches have different shapes)."""
    for x, _ in _dataset()["train"]:
        yield {"signal": x[:32]}


def evaluation_set() -> list[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Held-out signals: a list of (inputs, labels) batches, one per length."""
    return [({"signal": x}, y) for x, y in _dataset()["test"]]

