"""Tiny models and data loaders the tests name in model specs ("model_fixtures:...")."""

import numpy as np
import torch



def constant_calibration():
    """A deliberately broken calibration: every image is the same flat grey."""
    for _ in range(4):
        yield {"image": np.full((32, 1, 8, 8), 0.02, dtype=np.float32)}


def empty_calibration():
    return iter(())


def not_a_module():
    return "not a model"


class Doubler(torch.nn.Module):
    def forward(self, x):
        return x * 2


def doubler():
    return Doubler()


def doubler_eval():
    x = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    return {"x": x}, None


def eval_wrong_inputs():
    return [({"y": np.zeros((2, 4), np.float32)}, None)]


def eval_ragged_labels():
    return {"x": np.zeros((3, 4), np.float32)}, np.zeros(2)
