"""A user's model that no example of the project resembles: a click-through classifier with a float
input (``dense``, 13 features) and an int64 input (``tokens``, a variable-length history of item ids,
8..64) through an embedding table and a GRU, with two outputs (``logits`` [2], ``score`` [1]).
Its data is generated here and it trains itself in a few seconds (cached in the build's work folder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

VOCAB, DENSE = 50, 13


class Clicks(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, 8)
        self.gru = torch.nn.GRU(8, 16, batch_first=True)
        self.dense = torch.nn.Linear(DENSE, 16)
        self.head = torch.nn.Linear(32, 2)

    def forward(self, dense: torch.Tensor, tokens: torch.Tensor):
        _, h = self.gru(self.embed(tokens))
        z = torch.cat([h[0], torch.relu(self.dense(dense))], dim=1)
        logits = self.head(z)
        return logits, torch.sigmoid(logits[:, 1:] - logits[:, :1])


def _samples(n: int, length: int, seed: int):
    """Clicked (1) when the history holds more 'hot' items (ids < 10) than the dense features'
    sign pattern would say, otherwise not: both inputs matter."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, VOCAB, size=(n, length), dtype=np.int64)
    dense = rng.normal(size=(n, DENSE)).astype(np.float32)
    score = (tokens < 10).mean(1) * 4 + dense[:, 0] * 0.5
    labels = (score > np.median(score)).astype(np.int64)
    return {"dense": dense, "tokens": tokens}, labels


def _train(model: Clicks) -> None:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for step in range(120):
        feed, y = _samples(64, (8, 16, 32, 64)[step % 4], seed=step)
        logits, _ = model(torch.from_numpy(feed["dense"]), torch.from_numpy(feed["tokens"]))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()
        opt.step()


def build(work_dir: Path | None = None) -> torch.nn.Module:
    ckpt = Path(work_dir) / "clicks.pt" if work_dir else None
    model = Clicks()
    if ckpt and ckpt.is_file():
        model.load_state_dict(torch.load(ckpt))
        return model
    _train(model)
    if ckpt:
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), ckpt)
    return model


def calibration():
    for i, length in enumerate((8, 16, 32, 64)):
        yield _samples(64, length, seed=1000 + i)[0]


def evaluation():
    """Held out: batches of different history lengths (the dynamic axis)."""
    return [_samples(96, length, seed=2000 + i) for i, length in enumerate((8, 24, 64))]
