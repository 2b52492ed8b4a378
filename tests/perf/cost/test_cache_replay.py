"""A user's request log replayed through per-pod caches and one shared cache on a real redis-server,
for the user's clicks model (float32 `dense` [13], int64 `tokens` [-1], two outputs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from build_engines.spec import load_spec
from perf.cost.cache_replay import answer_bytes, read_request_log, replay
from perf.errors import CostError

USER = Path(__file__).resolve().parents[2] / "usermodels"


@pytest.fixture(scope="module")
def clicks(tmp_path_factory):
    root = tmp_path_factory.mktemp("clicks")
    shutil.copytree(USER / "clicks", root / "clicks")
    text = (USER / "clicks.toml").read_text()
    (root / "clicks.toml").write_text(text)
    (root / "ignoring.toml").write_text(text.replace('name = "clicks"', 'name = "clicks_ignoring"')
                                        + '\n[cache]\nttl_s = 50\nignore_inputs = ["tokens"]\n')
    return load_spec(root / "clicks.toml", resolve=False), load_spec(root / "ignoring.toml", resolve=False)


def write(tmp_path: Path, lines, name="log.txt") -> Path:
    p = tmp_path / name
    p.write_text("# the user's requests\n" + "\n".join(lines) + "\n")
    return p


def request_line(t: float, seed: int, tokens_seed: int | None = None) -> str:
    rng = np.random.default_rng(seed)
    dense = rng.normal(size=(1, 13)).round(3).tolist()
    toks = np.random.default_rng(seed if tokens_seed is None else tokens_seed).integers(0, 50, size=(1, 9)).tolist()
    return json.dumps({"t": t, "inputs": {"dense": dense, "tokens": toks}})


def test_the_log_forms_and_its_mistakes(tmp_path, clicks):
    spec, _ = clicks
    dtypes = {t.name: np.dtype(t.dtype) for t in spec.inputs}
    got = read_request_log(write(tmp_path, ["30 b", "10 a", '{"t": 20, "key": "c"}', request_line(5, 1)]), dtypes)
    assert [r.t for r in got] == [5, 10, 20, 30] and [r.key for r in got][1:] == ["a", "c", "b"]   # in time order
    assert len(got[0].key) == 64                                                  # inputs keyed by their digest
    assert [r.t for r in read_request_log(write(tmp_path, ["a", "b"]))] == [None, None]
    for lines, said in ((["10 a", "b"], "1 of 2 requests have a timestamp"), (["x y z"], "3 fields"),
                        (["soon a"], "timestamp in seconds"), (['{"t": 1}'], "'key' or 'inputs'"), (["{bad"], "JSON"),
                        ([json.dumps({"inputs": {"dense": [[1.0] * 13]}})], "'tokens'"),
                        ([json.dumps({"inputs": {"dense": [["x"] * 13], "tokens": [[1]]}})], "dtype"), ([], "no requests")):
        with pytest.raises(CostError, match=said) as e:
            read_request_log(write(tmp_path, lines), dtypes)
        assert "\n" not in str(e.value) and "log.txt" in str(e.value)
    assert answer_bytes(spec) > 12                     # the model's real answer (2 + 1 float32) with its header


def test_a_shared_cache_hits_what_per_pod_caches_miss(tmp_path, clicks):
    spec, _ = clicks
    rng = np.random.default_rng(3)
    keys = [f"k{int(i)}" for i in rng.integers(0, 50, size=1000)]
    keys[:50] = [f"k{i}" for i in range(50)]            # every key appears: 50 distinct
    rp = replay(write(tmp_path, keys), spec, replicas=4)
    assert rp.distinct == 50 and rp.shared_hit_rate == pytest.approx(1 - 50 / 1000)   # one cold miss per key
    assert 1 - 4 * 50 / 1000 <= rp.per_pod_hit_rate < rp.shared_hit_rate         # each pod misses each key once
    assert len(rp.per_pod_hit_rates) == 4 and rp.shared_evicted == 0 and rp.ttl_s is None
    assert 0 < rp.hit_p50_ms <= rp.hit_p99_ms < 50                               # real round trips, timed
    one = replay(write(tmp_path, keys), spec, replicas=1)
    assert one.per_pod_hit_rate == pytest.approx(one.shared_hit_rate)              # one pod is one cache


def test_the_ttl_runs_on_the_logs_clock_and_ignored_inputs_share_a_key(tmp_path, clicks):
    _, ignoring = clicks                                 # ttl_s 50, tokens left out of the key
    lines = [request_line(0, 1, 7), request_line(10, 1, 8), request_line(100, 1, 9), request_line(120, 1, 10),
             request_line(130, 2)]
    rp = replay(write(tmp_path, lines), ignoring, replicas=1)
    # t=10 hits (age 10), t=100 is expired (age 100 > 50) and stored again, t=120 hits (age 20), t=130 is new
    assert rp.shared_hit_rate == pytest.approx(2 / 5) and rp.shared_expired == 1 and rp.ttl_s == 50
    assert rp.per_pod_hit_rate == 0.0            # Triton's local cache keys on every input: the tokens differ
    assert replay(write(tmp_path, lines), ignoring, replicas=1, ttl_s=1000).shared_hit_rate == pytest.approx(3 / 5)


def test_the_memory_bound_evicts(tmp_path, clicks):
    spec, _ = clicks
    keys = [f"request-{i:06d}" for i in range(12_000)]
    log = write(tmp_path, keys + keys)                   # everything twice
    roomy = replay(log, spec, replicas=1, shared_memory_mb=256, pod_memory_mb=256)
    assert roomy.shared_hit_rate == pytest.approx(0.5) and roomy.shared_evicted == 0
    tight = replay(log, spec, replicas=1, shared_memory_mb=2, pod_memory_mb=2)
    assert tight.shared_evicted > 0 and tight.shared_hit_rate < 0.4
