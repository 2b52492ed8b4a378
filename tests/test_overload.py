"""Overload on the published default config, as a user meets it: a model of the user's own (no [serving]
table in its spec, so the project's defaults are what is served), built through the spec path, offered
twice its measured capacity for 60 s by our open-loop generator. The backlog bound (the CPU model's
``backlog_max``, on by default) must keep tritonserver's memory flat, the accepted requests' latency
within what the bound allows, and answer the rest with ``Overloaded``, counted apart from faults.

The server runs on half the cores and the clients (perf_analyzer for the capacity, the generator for
the overload) on the others (``split_cores``): on shared cores the generator's CPU came out of the
server's share, and how much depended on the machine. The model is ``tests/usermodels/speckle``
(~250 M multiply-adds a sample, ~385 requests/s on one core of an Intel Xeon)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from build_engines.pipeline import Pipeline
from build_engines.repository import read_config
from build_engines.spec import ServingConfig, load_spec
from clients import LocalTriton, TritonClient
from perf.measure import analyzer
from perf.measure.inputs import input_data_for, request_samples
from perf.measure.overload import split_cores, twice_capacity

HERE = Path(__file__).resolve().parent
SECONDS = 60.0
MEMORY_MB = 200          # the bound on tritonserver's growth (server + stubs) at 2x for 60 s


@pytest.fixture(scope="module")
def speckle(tmp_path_factory):
    """The user's folder (package beside spec, nothing on PYTHONPATH), built FP32 with the default serving."""
    root = tmp_path_factory.mktemp("speckle")
    shutil.copytree(HERE / "usermodels" / "speckle", root / "speckle")
    shutil.copy(HERE / "usermodels" / "speckle.toml", root / "speckle.toml")
    spec = load_spec(root / "speckle.toml")
    repo = root / "repo"
    res = Pipeline(spec, root / "build", ("fp32",)).run(repo, "cpu", ServingConfig.from_spec(spec), tensorrt=False,
                                                          bench=False)
    assert res.published == ["speckle_fp32"], res
    return spec, repo, root


def test_twice_the_capacity_for_a_minute_is_shed_with_memory_and_latency_bounded(speckle, tmp_path):
    spec, repo, root = speckle
    cfg = read_config(repo / "speckle_fp32")
    bound = int(cfg.parameters["backlog_max"].string_value)
    assert bound == max(64, 4 * cfg.max_batch_size) and not cfg.dynamic_batching.HasField("default_queue_policy")
    samples = request_samples(spec, 64)
    settings = analyzer.PerfSettings(measurement_interval_ms=3000, input_data=str(input_data_for(spec, root)))
    with LocalTriton(repo, model_control="explicit", load=["speckle_fp32"], log_path=tmp_path / "t.log",
                     cpus=split_cores()) as srv:
        # what make bench-overload measures: capacity by perf_analyzer (closed loop, far below the bound: it
        # aborts on a shed request), then our generator at twice that, memory sampled throughout
        run = twice_capacity(srv, repo, spec, samples, settings, bound_on=True, seconds=SECONDS)
        report = run.text() + f"; {run.error_examples[:1]}"
        print(report)
        assert run.backlog_max == bound                   # the published default is what was served
        # the offer was really twice the capacity (the generator kept up), for the whole minute
        assert run.sent_rps >= 1.8 * run.capacity_rps, report
        # rejections counted, each one an Overloaded that says which bound shed it; no other fault
        assert run.shed > 0.25 * run.scheduled and run.faults == 0, report
        assert all("backlog_max" in e for e in run.error_examples), report
        # memory flat: the queue never holds more than the bound
        assert run.memory_growth_mb < MEMORY_MB, report
        # what was accepted waited at most for the bound's worth of samples ahead of it plus one full batch,
        # at capacity; the factor 2 covers the generator's own lag on the shared cores (its lateness p95
        # reached 200 ms here). Without the bound the same minute gives p99 ~26 s (make bench-overload).
        assert run.accepted_p99_ms < 2 * run.wait_bound_ms, report
        # shedding does not starve the model: it still serves about its capacity
        assert run.served_rps > 0.8 * run.capacity_rps, report
        assert srv.alive()
        with TritonClient(srv.grpc_url, "speckle_fp32", "grpc") as c:      # and answers right afterwards
            t0 = time.perf_counter()
            out = c.infer({"image": samples[0]["image"]})["logits"]
            assert out.shape == (1, 4) and np.all(np.isfinite(out)) and time.perf_counter() - t0 < 1.0
