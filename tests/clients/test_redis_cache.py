"""The shared exact cache against a real redis-server and a real Triton serving a user's model
(clicks: float32 `dense` [13] + int64 `tokens` [-1] through a GRU, two outputs)."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from build_engines.pipeline import Pipeline
from build_engines.repository import ServingConfig
from build_engines.spec import load_spec
from clients import AsyncTritonClient, LocalTriton, TritonClient
from clients.errors import ClientError
from clients.redis_cache import (AsyncCachedClient, CachedClient, CachePolicy, LocalRedis, Outcome, cache_key, connect,
                                 encode_outputs, request_digest)

USER = Path(__file__).resolve().parents[1] / "usermodels"


@pytest.fixture(scope="module")
def clicks_repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("clicks")
    shutil.copytree(USER / "clicks", root / "clicks")
    shutil.copy(USER / "clicks.toml", root / "clicks.toml")
    spec = load_spec(root / "clicks.toml")
    repo = root / "repo"
    Pipeline(spec, root / "build" / spec.name, precisions=("fp32",)).run(repo, "cpu", ServingConfig.from_spec(spec),
                                                                         tensorrt=False, bench=False)
    return repo


@pytest.fixture(scope="module")
def server(clicks_repo, tmp_path_factory):
    with LocalTriton(clicks_repo, model_control="explicit", load=("clicks_fp32",),
                     log_path=tmp_path_factory.mktemp("logs") / "triton.log") as srv:
        yield srv


@pytest.fixture()
def redis_server():
    with LocalRedis(maxmemory_mb=8) as r:
        yield r


def request(seed: int, batch: int = 2, seq: int = 12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"dense": rng.normal(size=(batch, 13)).astype(np.float32),
            "tokens": rng.integers(0, 50, size=(batch, seq)).astype(np.int64)}


def cached(server, redis_server, **policy) -> CachedClient:
    policy.setdefault("timeout_s", 0.5)       # a slow call on a busy 2-core machine is not the fault under test
    return CachedClient(TritonClient(server.http_url, "clicks_fp32"), redis_server.url, CachePolicy(**policy))


def test_the_server_is_private_bounded_and_forgetful(redis_server):
    import redis
    text = redis_server.config_text()
    assert "bind 127.0.0.1" in text and "maxmemory 8mb" in text and "allkeys-lru" in text and 'save ""' in text
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=redis_server.port, password="wrong").ping()
    with pytest.raises((redis.ResponseError, redis.AuthenticationError), match="NOAUTH|authenticated"):
        redis.Redis(host="127.0.0.1", port=redis_server.port).get("x")
    c = connect(redis_server.url, 1.0)
    with pytest.raises(redis.ResponseError, match="unknown command"):
        c.config_set("dir", "/tmp")                 # a cache client cannot rewrite the server's config
    assert c.info("memory")["maxmemory"] == 8 << 20 and c.info("persistence")["aof_enabled"] == 0
    c.set("k", b"v")
    redis_server.restart()
    assert connect(redis_server.url, 1.0).get("k") is None          # persistence off: a restart is an empty cache


def test_a_hit_is_the_models_exact_answer_and_keys_ignore_what_they_are_told(server, redis_server):
    with cached(server, redis_server) as c, TritonClient(server.http_url, "clicks_fp32") as plain:
        x = request(1)
        first = c.infer(x)
        assert c.last is Outcome.MISS
        again = c.infer({k: v.copy() for k, v in x.items()})
        assert c.last is Outcome.HIT
        direct = plain.infer(x)
        for name in ("logits", "score"):
            assert again[name].dtype == direct[name].dtype and again[name].shape == direct[name].shape
            np.testing.assert_array_equal(again[name], first[name])
            np.testing.assert_array_equal(again[name], direct[name])
        c.infer(request(2))
        assert c.last is Outcome.MISS                                # other inputs, other key
        only = c.infer(x, outputs=["score"])
        assert set(only) == {"score"} and c.last is Outcome.MISS     # a subset of outputs is its own entry
        assert (c.stats.hits, c.stats.misses, c.stats.stored) == (1, 3, 3)
        text = c.stats.prometheus("clicks_fp32")
        assert 'tck_cache_requests_total{model="clicks_fp32",outcome="hit"} 1' in text
        assert 'outcome="miss"} 3' in text
    # the key: dtype, shape and every kept input count; ignored inputs do not
    a = request(3)
    assert request_digest(a) != request_digest({**a, "dense": a["dense"].astype(np.float64)})
    assert request_digest(a) != request_digest({**a, "tokens": a["tokens"][:, :-1]})
    assert request_digest(a, ["tokens"]) == request_digest({**a, "tokens": a["tokens"] + 1}, ["tokens"])
    assert CachePolicy(ignore_inputs="tokens").ignore_inputs == ("tokens",)       # a name, not its letters
    with pytest.raises(ClientError, match="digest="):      # a model with no published digest is not cached blindly
        CachedClient(TritonClient(server.http_url, "clicks_fp32"), redis_server.url,
                     CachePolicy())._set_digest({"parameters": {}}, "clicks_fp32")


def test_a_republished_model_never_answers_from_the_old_ones_entries(server, clicks_repo, redis_server):
    """Republish = the server now serves another artifact: its config's digest changes, and the cache
    (re-reading the digest) keys on the new one; back on the old artifact, the old entries answer again."""
    cfg = clicks_repo / "clicks_fp32" / "config.pbtxt"
    old = cfg.read_text()
    with cached(server, redis_server, digest_refresh_s=0.0) as c, \
            TritonClient(server.http_url, "clicks_fp32") as admin:
        x = request(4)
        c.infer(x)
        c.infer(x)
        assert c.last is Outcome.HIT
        digest = c._digest
        try:
            cfg.write_text(old.replace(f'string_value: "{digest}"', 'string_value: "0123456789abcdef"'))
            admin.load_model()
            c.infer(x)
            assert c.last is Outcome.MISS and c._digest == "0123456789abcdef"
            c.infer(x)
            assert c.last is Outcome.HIT
        finally:
            cfg.write_text(old)
            admin.load_model()
        c.infer(x)
        assert c.last is Outcome.HIT and c._digest == digest


def test_the_ttl_expires_and_the_memory_bound_evicts(server, redis_server):
    with cached(server, redis_server, ttl_s=0.3) as c:
        x = request(5)
        c.infer(x)
        c.infer(x)
        assert c.last is Outcome.HIT
        time.sleep(0.5)
        c.infer(x)
        assert c.last is Outcome.MISS
    r = connect(redis_server.url, 1.0)
    blob = b"x" * 100_000
    for i in range(200):                                     # 20 MB through an 8 MB bound
        r.set(f"tck:x:filler:{i}", blob)
    info = r.info()
    assert info["evicted_keys"] > 0 and info["used_memory"] <= 9 << 20
    assert r.dbsize() < 200


def test_a_poisoned_entry_is_refused_deleted_and_never_returned(server, redis_server):
    with cached(server, redis_server) as c:
        x = request(6)
        truth = c.infer(x)
        key = cache_key(c.policy, "clicks_fp32", "", c._digest, x)
        r = connect(redis_server.url, 1.0)
        assert r.get(key) is not None
        wrong_shape = {"logits": np.zeros((2, 3), np.float32), "score": np.zeros((2, 1), np.float32)}
        wrong_dtype = {"logits": np.zeros((2, 2), np.float64), "score": np.zeros((2, 1), np.float32)}
        wrong_batch = {"logits": np.zeros((3, 2), np.float32), "score": np.zeros((3, 1), np.float32)}
        extra = {**truth, "admin": np.zeros((2, 1), np.float32)}
        import struct
        def header(text: bytes) -> bytes:
            return b"TCK-TENSORS-1\n" + struct.pack("<I", len(text)) + text
        for poison in (encode_outputs(wrong_shape), encode_outputs(wrong_dtype), encode_outputs(wrong_batch),
                       encode_outputs(extra), b"garbage", encode_outputs(truth)[:-3], b"\x80\x04pickle",
                       header(b'[{"name": "logits", "dtype": "<f4", "shape": [Infinity], "bytes": 1e400}]'),
                       header(b"[" * 100_000 + b"]" * 100_000), header(b"{}")[:-1] + b"\xff" * 8):
            r.set(key, poison)
            got = c.infer(x)
            assert c.last is Outcome.REFUSED
            for name in truth:
                np.testing.assert_array_equal(got[name], truth[name])
            assert r.get(key) != poison                      # deleted (and the model's answer stored again)
        assert c.stats.refused == 10
    with cached(server, redis_server, max_value_bytes=50) as small:
        small.infer(request(7))
        assert small.stats.too_large == 1 and small.stats.stored == 0


def test_redis_stopped_paused_and_restarted_under_load_fails_no_request(server, redis_server):
    """Four threads send requests (a few distinct inputs, so hits happen) while Redis is paused, killed
    and restarted; every request gets the model's answer, and each fault shows as bypasses."""
    inputs = [request(100 + i) for i in range(6)]
    with TritonClient(server.http_url, "clicks_fp32") as plain:
        truth = [plain.infer(x) for x in inputs]
    clients = [cached(server, redis_server, retry_after_s=0.2, timeout_s=0.005) for _ in range(4)]
    failures, answered, stop = [], [0] * 4, threading.Event()

    def worker(i: int) -> None:
        n = 0
        while not stop.is_set():
            j = n % len(inputs)
            try:
                got = clients[i].infer(inputs[j])
                for name in truth[j]:
                    np.testing.assert_allclose(got[name], truth[j][name], rtol=1e-6, atol=1e-6)
                answered[i] += 1
            except Exception as e:  # noqa: BLE001 - any failure is the test's failure
                failures.append(repr(e))
            n += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        before = sum(c.stats.bypasses for c in clients)
        redis_server.pause()
        time.sleep(1.0)
        redis_server.resume()
        paused = sum(c.stats.bypasses for c in clients) - before
        time.sleep(0.5)
        redis_server.stop()
        time.sleep(1.0)
        redis_server.start()
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not failures, failures[:3]
    total = sum(c.stats.requests for c in clients)
    assert total == sum(answered) and total > 50
    assert paused > 0                                          # the pause was bypassed, not waited out
    assert sum(c.stats.errors for c in clients) > 0
    assert all(c.stats.hits > 0 for c in clients)              # hits before the faults and after the restart
    for c, x in zip(clients, inputs):              # after the restart, the cache is back in use
        c.infer(x)
        c.infer(x)
        assert c.last is Outcome.HIT
        c.close()


def test_the_async_client_hits_and_bypasses_a_paused_redis(server, redis_server):
    async def go():
        async with AsyncCachedClient(AsyncTritonClient(server.grpc_url, "clicks_fp32", "grpc"), redis_server.url,
                                     CachePolicy(retry_after_s=0.0, timeout_s=0.2)) as c:
            x = request(8)
            first = await c.infer(x)
            again = await c.infer(x)
            assert c.last is Outcome.HIT
            np.testing.assert_array_equal(first["logits"], again["logits"])
            redis_server.pause()
            try:
                t0 = time.monotonic()
                third = await c.infer(x)
                took = time.monotonic() - t0
            finally:
                redis_server.resume()
            assert c.last is Outcome.BYPASS and c.stats.errors == 1
            np.testing.assert_allclose(third["logits"], first["logits"], rtol=1e-6, atol=1e-6)
            return took
    took = asyncio.run(go())
    assert took < 5.0                                           # the pause cost one Redis timeout, not a hang


def test_no_redis_url_is_one_clear_line(server, monkeypatch):
    monkeypatch.delenv("TCK_REDIS_URL", raising=False)
    with pytest.raises(ClientError, match="tck cache serve"):
        CachedClient(TritonClient(server.http_url, "clicks_fp32"))


def test_the_async_client_refuses_a_poisoned_entry_and_answers_from_the_model(server, redis_server):
    """The async client shares the sync one's read: a stored value that is not this model's answer is
    refused, deleted and replaced by the model's answer."""
    async def go():
        async with AsyncCachedClient(AsyncTritonClient(server.grpc_url, "clicks_fp32", "grpc"), redis_server.url,
                                     CachePolicy(timeout_s=0.5)) as c:
            x = request(9)
            truth = await c.infer(x)
            key = cache_key(c.policy, "clicks_fp32", "", c._digest, x)
            r = connect(redis_server.url, 1.0)
            poison = encode_outputs({"logits": np.zeros((2, 3), np.float32), "score": np.zeros((2, 1), np.float32)})
            r.set(key, poison)
            got = await c.infer(x)
            assert c.last is Outcome.REFUSED and c.stats.refused == 1
            for name in truth:
                np.testing.assert_array_equal(got[name], truth[name])
            assert r.get(key) not in (None, poison)            # deleted, and the model's answer stored again
            await c.infer(x)
            assert c.last is Outcome.HIT
    asyncio.run(go())


def _tck(*args, env: dict) -> "subprocess.CompletedProcess[str]":
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "tck", *args], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2], env=env)


def test_tck_infer_through_the_cache_misses_then_hits_with_the_models_answer(server, redis_server, tmp_path):
    """`tck infer --cache` as a user runs it: the URL from $TCK_REDIS_URL (as `tck cache serve` prints
    it), the model's answer on a miss, the same answer on the hit, and a poisoned entry refused."""
    import json
    import os
    x = request(10)
    np.savez(tmp_path / "in.npz", **x)
    env = dict(os.environ, TCK_REDIS_URL=redis_server.url, TRITON_INFER_KEY=server.infer_key)
    args = ("infer", "clicks_fp32", "--input", str(tmp_path / "in.npz"), "--url", server.http_url, "--cache")
    with TritonClient(server.http_url, "clicks_fp32") as plain:
        truth = plain.infer(x)
    seen = []
    for _ in range(2):
        r = _tck(*args, env=env)
        assert r.returncode == 0, r.stderr
        seen.append(r.stderr.strip().splitlines()[-1])
        got = json.loads(r.stdout)
        for name in truth:
            np.testing.assert_allclose(np.array(got[name]), truth[name], rtol=1e-6, atol=1e-6)
    assert seen == ["cache: miss", "cache: hit"]
    r = connect(redis_server.url, 1.0)
    keys = r.keys("*")
    assert len(keys) == 1
    r.set(keys[0], b"garbage")
    refused = _tck(*args, env=env)
    assert refused.returncode == 0 and refused.stderr.strip().splitlines()[-1] == "cache: refused", refused.stderr
    np.testing.assert_allclose(np.array(json.loads(refused.stdout)["logits"]), truth["logits"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("to_file", [False, True], ids=["url printed", "url file"])
def test_tck_cache_serve_prints_a_url_that_works_and_stops_clean_on_sigterm(tmp_path, to_file):
    """`tck cache serve`: the URL it gives reaches a private, bounded Redis (no password, no entry), and
    SIGTERM stops it, redis-server with it. With --url-file the URL goes to that file only (readable by its
    owner, the password never on the terminal), the export printed names the file, a client finds the URL
    through TCK_REDIS_URL_FILE, and SIGTERM removes the file."""
    import os
    import re
    import signal
    import subprocess
    import sys
    import redis
    from clients.redis_cache import REDIS_URL_ENV, REDIS_URL_FILE_ENV, url_from_env
    url_file = tmp_path / "redis.url"
    proc = subprocess.Popen([sys.executable, "-m", "tck", "cache", "serve", "--maxmemory-mb", "8"]
                            + (["--url-file", str(url_file)] if to_file else []),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    try:
        line = proc.stdout.readline()
        if to_file:
            assert line == f"export {REDIS_URL_FILE_ENV}='{url_file}'\n", (line, proc.stderr.read() if proc.poll() is not None else "")
            got = url_file.read_text()
        else:
            got = line[len(f"export {REDIS_URL_ENV}='"):-2] + "\n" if line.startswith("export") else line
        m = re.fullmatch(r"(redis://:[^@]+@127\.0\.0\.1:(\d+)/0)\n", got)
        assert m, (line, got, proc.stderr.read() if proc.poll() is not None else "")
        url, port = m.group(1), int(m.group(2))
        c = connect(url, 1.0)
        c.set("k", b"v")
        assert c.get("k") == b"v" and c.info("memory")["maxmemory"] == 8 << 20
        with pytest.raises((redis.ResponseError, redis.AuthenticationError), match="NOAUTH|authenticated"):
            redis.Redis(host="127.0.0.1", port=port).get("k")
        if to_file:
            assert url_file.stat().st_mode & 0o777 == 0o600
            assert [p.name for p in tmp_path.iterdir()] == ["redis.url"]          # no temporary file left
            with pytest.MonkeyPatch.context() as env:
                env.delenv(REDIS_URL_ENV, raising=False)
                env.setenv(REDIS_URL_FILE_ENV, str(url_file))
                assert connect(url_from_env(), 1.0).get("k") == b"v"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        err = proc.stderr.read()
        assert "cache serve: stopped" in err and url not in err
        assert not url_file.exists()
        with pytest.raises(redis.ConnectionError):
            redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1).ping()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)


def test_a_url_file_no_file_can_be_written_at_fails_in_one_line_before_redis_starts(tmp_path):
    """A folder, or a file in a folder that does not exist: one line that says what to do, exit 2, and no
    redis-server started for it."""
    import subprocess
    import sys
    for bad, why in ((tmp_path, "is a folder: name a file in it"), (tmp_path / "no" / "u.url", "name a file in a folder that exists")):
        r = subprocess.run([sys.executable, "-m", "tck", "cache", "serve", "--url-file", str(bad)], capture_output=True,
                           text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
        assert r.returncode == 2 and r.stdout == "", r
        assert r.stderr.count("\n") == 1 and why in r.stderr and "redis-server on" not in r.stderr, r.stderr


def test_a_redis_url_file_that_others_can_read_or_that_holds_no_url_is_refused_with_what_to_do(tmp_path, monkeypatch):
    """The file holds the password: one readable by group or others is refused (chmod 600 says the fix),
    as is a missing or empty one; a file another server has rewritten since is not removed."""
    from clients.errors import ClientError
    from clients.redis_cache import (REDIS_URL_ENV, REDIS_URL_FILE_ENV, read_url_file, remove_url_file, url_from_env,
                                     write_url_file)
    f = write_url_file(tmp_path / "u", "redis://:pw@127.0.0.1:6390/0")
    assert read_url_file(f) == "redis://:pw@127.0.0.1:6390/0"
    f.chmod(0o644)
    with pytest.raises(ClientError, match=r"readable by others \(mode 644\).*chmod 600"):
        read_url_file(f)
    f.chmod(0o600)
    f.write_text("\n")
    with pytest.raises(ClientError, match="holds no redis:// URL"):
        read_url_file(f)
    monkeypatch.delenv(REDIS_URL_ENV, raising=False)
    monkeypatch.setenv(REDIS_URL_FILE_ENV, str(tmp_path / "missing"))
    with pytest.raises(ClientError, match="cannot read the Redis URL file .*tck cache serve --url-file"):
        url_from_env()
    monkeypatch.setenv(REDIS_URL_ENV, "redis://:env@127.0.0.1:6391/0")        # the URL itself comes first
    assert url_from_env() == "redis://:env@127.0.0.1:6391/0"
    write_url_file(f, "redis://:other@127.0.0.1:6392/0")
    assert not remove_url_file(f, "redis://:pw@127.0.0.1:6390/0") and f.exists()
    assert remove_url_file(f, "redis://:other@127.0.0.1:6392/0") and not f.exists()
    with pytest.raises(ClientError, match="cannot write the Redis URL file"):
        write_url_file(tmp_path / "no" / "such" / "dir" / "u", "redis://:pw@127.0.0.1:6390/0")
