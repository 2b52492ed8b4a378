"""Variable-length data end to end: a 1-D conv over signals of 32..256 samples, built through its
TOML spec, calibrated on batches of different lengths with every method, gated at the shortest,
typical and longest length, and served by the real Triton at lengths it never saw as a batch."""

import numpy as np
import pytest

from build_engines import data, isa
from build_engines.gate import outputs_of
from build_engines.pipeline import Pipeline
from build_engines.spec import load_spec
from clients import LocalTriton, TritonClient


@pytest.fixture(scope="module")
def signals_spec():
    return load_spec("signals")


@pytest.fixture(scope="module")
def signals_builds(signals_spec, tmp_path_factory):
    root = tmp_path_factory.mktemp("signals")
    out = {}
    for method in ("minmax", "entropy", "percentile"):   # one work dir: the model trains once
        out[method] = Pipeline(signals_spec, root / "build", precisions=("fp32", "int8"), calibration_method=method) \
            .run(root / f"repo-{method}", bench=False, tensorrt=False)
    return out, root


def test_evaluation_is_a_list_of_batches_of_different_lengths(signals_spec):
    batches = signals_spec.evaluation_batches()
    lengths = {feed["signal"].shape[-1] for feed, _ in batches}
    assert len(batches) == len(lengths) >= 3
    assert data.check_lengths(signals_spec, batches) == (32, 128, 256)   # the spec's dynamic_range


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_static_int8_passes_the_gate_at_every_length_with_every_method(signals_builds, method):
    res = signals_builds[0][method]
    assert res.calibration["method"] == method and res.calibration["batches"] == 8
    g = res.gates["int8_cpu"]
    assert g.passed and g.gated and not g.reasons, g.reasons
    assert sorted(g.details["lengths"], key=int) == ["32", "128", "256"]
    for d in g.details["lengths"].values():
        assert d["agreement"] >= 0.99 and d["relative_error"] <= 0.05
    assert res.calibration["cpu_recipe"] == isa.cpu_recipe(isa.int8_isa())
    assert "signals_int8" in res.published


def test_export_was_checked_at_every_length(signals_builds):
    res = signals_builds[0]["minmax"]
    # batch 1, the opt batch, the three checked lengths, and the other 7 held-out lengths
    assert res.export_check["batches"] == 2 + 3 + 7 and res.export_check["max_abs_diff"] < 1e-3


def test_served_at_unseen_lengths_matches_in_process(signals_builds, signals_spec, tmp_path):
    _, root = signals_builds
    repo = root / "repo-minmax"     # the later builds replaced build/, not this repository
    rng = np.random.default_rng(1)
    with LocalTriton(repo, log_path=tmp_path / "triton.log") as srv:
        for length in (40, 200):
            x = rng.normal(size=(3, 1, length)).astype(np.float32)
            for variant in ("fp32", "int8"):
                path = repo / f"signals_{variant}" / "1" / "model.onnx"
                with TritonClient(srv.http_url, f"signals_{variant}") as c:
                    served = c.infer({"signal": x})["logits"]
                np.testing.assert_allclose(served, outputs_of(path, {"signal": x}), rtol=1e-5, atol=1e-5)
