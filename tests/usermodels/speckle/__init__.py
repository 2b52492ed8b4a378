"""A user's model that costs real compute per sample, so that a load generator can offer it twice its
capacity (digits answers ~5,000 requests/s here: doubling that takes more CPU than the machine has) and
so that a shed request, which still passes Triton and the backend stub (~0.2 ms here), costs the server
little beside a served one: with ~87 M multiply-adds a sample, the 2x overload left an Intel Xeon's
server 0.80x its capacity; at ~250 M, 0.91x. A small convolutional classifier over 3x48x48 images
(few weights): which of 4 quadrants holds the bright speckle. Its data is generated here and it trains
itself in seconds (cached in the build's work folder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

SIDE = 48
WIDE = 192          # the last convolutions' channels: most of the ~250 M multiply-adds


class Speckle(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        c = torch.nn.Conv2d
        self.features = torch.nn.Sequential(
            c(3, 32, 3, padding=1), torch.nn.ReLU(), c(32, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            c(32, WIDE, 3, padding=1), torch.nn.ReLU(), c(WIDE, WIDE, 3, padding=1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(2))
        self.head = torch.nn.Linear(WIDE * 4, 4)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(image), 1))


def samples(n: int, seed: int):
    """Noise, plus a bright square in one quadrant: the label is the quadrant."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.3, size=(n, 3, SIDE, SIDE)).astype(np.float32)
    y = rng.integers(0, 4, size=n)
    h = SIDE // 2
    for i, q in enumerate(y):
        r, c = (q // 2) * h + rng.integers(2, h - 8), (q % 2) * h + rng.integers(2, h - 8)
        x[i, :, r:r + 6, c:c + 6] += 1.5
    return {"image": x}, y.astype(np.int64)


def build(work_dir: Path | None = None) -> torch.nn.Module:
    ckpt = Path(work_dir) / "speckle.pt" if work_dir else None
    model = Speckle()
    if ckpt and ckpt.is_file():
        model.load_state_dict(torch.load(ckpt))
        return model
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=0.003)
    for step in range(40):
        feed, y = samples(32, seed=step)
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(feed["image"])), torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
    if ckpt:
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), ckpt)
    return model


def calibration():
    for i in range(4):
        yield samples(32, seed=1000 + i)[0]


def evaluation():
    return [samples(64, seed=2000 + i) for i in range(2)]
