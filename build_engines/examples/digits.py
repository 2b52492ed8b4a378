"""A small CNN trained on scikit-learn's load_digits (8x8 images, 10 classes).

Training is part of the build (a few seconds on 2 cores) and is cached as a checkpoint in the
build's work folder. The held-out test split is used only for evaluation; calibration draws from
the training split only.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from build_engines.examples import trained_or_cached

SEED = 0
TEST_FRACTION = 0.2


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image))


@lru_cache(maxsize=1)
def splits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test); images are float32 [N, 1, 8, 8] scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=TEST_FRACTION, random_state=SEED, stratify=y)
    return x_tr, y_tr, x_te, y_te


def train(epochs: int = 30, seed: int = SEED) -> DigitsCNN:
    torch.manual_seed(seed)
    x_tr, y_tr, _, _ = splits()
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xs, ys = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xs), generator=g).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xs[idx]), ys[idx]).backward()
            opt.step()
    return model.eval()


def trained_model(work_dir: Path | None = None) -> DigitsCNN:
    """Model factory for the spec: loads the cached checkpoint or trains one."""
    return trained_or_cached(work_dir, "digits_cnn.pt", DigitsCNN, train)


def calibration_batches(batch_size: int = 32, count: int = 512):
    """Training images only (never the test split), in equal-shape batches."""
    x_tr, _, _, _ = splits()
    rng = np.random.default_rng(SEED)
    pick = rng.choice(len(x_tr), size=min(count, len(x_tr)), replace=False)
    x = x_tr[pick]
    n = len(x) // batch_size * batch_size
    for i in range(0, n, batch_size):
        yield {"image": x[i : i + batch_size]}


def evaluation_set() -> tuple[dict[str, np.ndarray], np.ndarray]:
    _, _, x_te, y_te = splits()
    return {"image": x_te}, y_te
