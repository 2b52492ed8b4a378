"""Shared fixtures: one digits build per session and one real local Triton on free ports."""

from __future__ import annotations

import shutil

import pytest

from build_engines.pipeline import Pipeline
from build_engines.repository import ServingConfig
from build_engines.spec import load_spec
from clients import LocalTriton


@pytest.fixture(scope="session")
def digits_spec():
    return load_spec("digits")


@pytest.fixture(scope="session")
def digits_build(tmp_path_factory, digits_spec):
    """The real pipeline: train, export, FP16, calibrated INT8, gate, publish (cpu target)."""
    root = tmp_path_factory.mktemp("digits")
    repo = root / "repo"
    result = Pipeline(digits_spec, root / "build").run(repo, "cpu", ServingConfig.from_spec(digits_spec),
                                                       tensorrt=False, bench=False)
    return result, repo


@pytest.fixture(scope="session")
def triton(digits_build, tmp_path_factory):
    _, repo = digits_build
    with LocalTriton(repo, log_path=tmp_path_factory.mktemp("logs") / "triton.log") as srv:
        yield srv


@pytest.fixture()
def copy_repo(digits_build, tmp_path):
    """A private copy of the published repository, for tests that break things."""
    _, repo = digits_build
    dst = tmp_path / "repo"
    shutil.copytree(repo, dst)
    return dst
