"""The semantic cache shared through a real redis-server by two client processes (each with its own
local index), with TTL, another encoder, poisoned entries and Redis going away."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clients.redis_cache import LocalRedis, connect
from clients.semantic_cache import Entry, RedisEmbeddingStore, SemanticCache

ROOT = Path(__file__).resolve().parents[2]
DIM = 64

# A user's own embedder: hashed character trigrams, normalised by the cache (deterministic, any process).
EMBED = """
import hashlib, numpy as np
def embed(texts, dim=64):
    out = np.zeros((len(texts), dim), np.float32)
    for i, t in enumerate(texts):
        t = " " + t.lower().strip(" ?!.") + " "
        for j in range(len(t) - 2):
            out[i, int(hashlib.md5(t[j:j + 3].encode()).hexdigest(), 16) % dim] += 1
    return out
"""
_ns: dict = {}
exec(EMBED, _ns)
embed = _ns["embed"]

REPLICA = EMBED + """
import json, sys
from clients.semantic_cache import RedisEmbeddingStore, SemanticCache
store = RedisEmbeddingStore(sys.argv[1], encoder="trigram64", dim=64)
cache = SemanticCache(embed, threshold=0.9, store=store)
for line in sys.stdin:
    q = line.rstrip("\\n")
    r = cache.get_or_compute(q, lambda q: "answer from process B to " + q)
    print(json.dumps({"hit": r.hit, "answer": r.answer, "synced": store.stats.synced}), flush=True)
"""


@pytest.fixture()
def redis_server():
    with LocalRedis(maxmemory_mb=32) as r:
        yield r


def store(redis_server, **kw) -> RedisEmbeddingStore:
    return RedisEmbeddingStore(redis_server.url, encoder=kw.pop("encoder", "trigram64"), dim=DIM, **kw)


def test_two_client_processes_share_one_store(redis_server):
    other = subprocess.Popen([sys.executable, "-c", REPLICA, redis_server.url], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        def ask(q: str) -> dict:
            other.stdin.write(q + "\n")
            other.stdin.flush()
            return json.loads(other.stdout.readline())

        assert ask("How do I reset my password?") == {"hit": False, "synced": 0,
                                                     "answer": "answer from process B to How do I reset my password?"}
        here = SemanticCache(embed, threshold=0.9, store=store(redis_server))
        r = here.get_or_compute("how do I reset my password", lambda q: "WRONG: computed again")
        assert r.hit and r.answer == "answer from process B to How do I reset my password?"   # B's entry, here
        assert not here.get_or_compute("where is my invoice", lambda q: "answer from process A").hit
        got = ask("Where is my invoice?")
        assert got["hit"] and got["answer"] == "answer from process A" and got["synced"] == 1  # A's entry, in B
        assert not ask("cancel my subscription")["hit"]
    finally:
        other.stdin.close()
        other.wait(10)
    late = store(redis_server)                          # a replica started later resyncs all three
    assert len(late) == 0 and late.search(np.zeros(DIM, np.float32)) is not None and len(late) == 3
    assert late.stats.resyncs == 1 and late.stats.synced == 3


def test_entries_expire_and_another_encoder_never_matches(redis_server):
    short = SemanticCache(embed, threshold=0.9, store=store(redis_server, ttl_s=0.4))
    short.get_or_compute("track my parcel", lambda q: "A")
    reader = SemanticCache(embed, threshold=0.9, store=store(redis_server))
    assert reader.get_or_compute("track my parcel", lambda q: "B").hit
    time.sleep(0.6)
    assert reader.store.search(reader.lookup("track my parcel")[0], 0.9) is None     # expired in the local copy
    assert connect(redis_server.url, 1.0).keys("tck:sem:trigram64:e:*") == []        # and in Redis
    assert not SemanticCache(embed, threshold=0.9, store=store(redis_server)).get_or_compute(
        "track my parcel", lambda q: "C").hit
    other = SemanticCache(embed, threshold=0.0, store=store(redis_server, encoder="another-encoder"))
    assert not other.get_or_compute("track my parcel", lambda q: "D").hit   # another encoder's vectors: never compared


def test_a_poisoned_entry_is_refused(redis_server):
    r = connect(redis_server.url, 1.0)
    good = store(redis_server)
    good.add(Entry("q", "a", np.eye(DIM, dtype=np.float32)[0]))
    prefix = "tck:sem:trigram64:e:"
    r.hset(prefix + "short", mapping={"q": "x", "a": "y", "v": np.ones(3, np.float32).tobytes(), "x": "9e99"})
    r.hset(prefix + "notunit", mapping={"q": "x", "a": "y", "v": np.ones(DIM, np.float32).tobytes(), "x": "9e99"})
    r.hset(prefix + "nan", mapping={"q": "x", "a": "y", "v": np.full(DIM, np.nan, np.float32).tobytes(), "x": "9e99"})
    r.hset(prefix + "noanswer", mapping={"q": "x", "v": np.eye(DIM, dtype=np.float32)[1].tobytes(), "x": "9e99"})
    fresh = store(redis_server)
    fresh.resync()
    assert len(fresh) == 1 and fresh.stats.refused == 4
    with pytest.raises(ValueError, match="64"):
        fresh.add(Entry("q", "a", np.ones(3, np.float32)))


def test_redis_gone_the_replica_searches_what_it_has_and_resyncs_when_back(redis_server):
    s = store(redis_server, timeout_s=0.05, retry_after_s=0.1)
    cache = SemanticCache(embed, threshold=0.9, store=s)
    cache.get_or_compute("open an account", lambda q: "A")
    redis_server.pause()
    try:
        t0 = time.monotonic()
        assert cache.get_or_compute("open an account", lambda q: "B").hit          # the local copy answers
        cache.get_or_compute("close an account", lambda q: "C")                     # added locally only
        assert time.monotonic() - t0 < 2.0 and s.stats.errors >= 1
    finally:
        redis_server.resume()
    redis_server.restart()                   # an empty Redis (persistence off)
    time.sleep(0.15)
    other = SemanticCache(embed, threshold=0.9, store=store(redis_server))
    other.get_or_compute("reset my pin", lambda q: "D")
    time.sleep(0.15)
    assert cache.get_or_compute("reset my pin", lambda q: "E").answer == "D"        # resynced from the new Redis
    assert s.stats.resyncs >= 2
