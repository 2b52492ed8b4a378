"""The load tools send the spec's own held-out samples, dynamic axes at the lengths the data has."""

import json

import numpy as np
import pytest

from build_engines.spec import load_spec
from perf.errors import BadSettings
from perf.measure.inputs import input_data_for, request_samples, write_input_data


def test_a_dynamic_shape_model_gets_every_length_of_its_data_from_the_first_requests(tmp_path):
    spec = load_spec("signals")
    lengths = sorted({feed["signal"].shape[-1] for feed, _ in spec.evaluation_batches()})
    samples = request_samples(spec, limit=64)
    first = [s["signal"].shape[-1] for s in samples[:len(lengths)]]
    assert sorted(first) == lengths and all(len(s["signal"]) == 1 for s in samples)
    doc = json.loads(input_data_for(spec, tmp_path, limit=64).read_text())
    assert [d["signal"]["shape"][-1] for d in doc["data"]] == [s["signal"].shape[-1] for s in samples]
    assert doc["data"][0]["signal"]["content"] == samples[0]["signal"][0].ravel().tolist()   # real values, not random


def test_data_that_json_cannot_carry_is_refused(tmp_path):
    with pytest.raises(BadSettings, match="NaN or Inf"):
        write_input_data(tmp_path / "x.json", [{"image": np.array([[np.nan, 1.0]], np.float32)}])
    with pytest.raises(BadSettings, match="empty"):
        write_input_data(tmp_path / "x.json", [])
