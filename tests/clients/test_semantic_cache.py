"""The semantic cache's own logic, with a deterministic embedder (the served encoder is in test_minilm)."""

import threading

import numpy as np
import pytest

from clients.semantic_cache import Entry, InMemoryStore, SemanticCache


def embedder(table):
    def embed(texts):
        return np.stack([np.asarray(table[t], np.float32) for t in texts])
    return embed


TABLE = {"a": [1, 0, 0], "a'": [0.9, np.sqrt(1 - 0.81), 0], "b": [0, 1, 0], "c": [0, 0, 1], "edge": [0.8, 0.6, 0]}


def test_hit_and_miss_paths():
    cache = SemanticCache(embedder(TABLE), threshold=0.85)
    assert not cache.get_or_compute("a", lambda q: "A").hit
    r = cache.get_or_compute("a'", lambda q: "WRONG")
    assert r.hit and r.answer == "A" and r.matched_query == "a" and r.similarity == pytest.approx(0.9)
    assert not cache.get_or_compute("b", lambda q: "B").hit
    assert (cache.hits, cache.misses) == (1, 2) and cache.hit_rate == pytest.approx(1 / 3)


def test_threshold_boundary_is_inclusive():
    cache = SemanticCache(embedder(TABLE), threshold=0.8)
    cache.get_or_compute("a", lambda q: "A")
    assert cache.get_or_compute("edge", lambda q: "E").hit            # cosine exactly 0.8
    strict = SemanticCache(embedder(TABLE), threshold=0.8001)
    strict.get_or_compute("a", lambda q: "A")
    assert not strict.get_or_compute("edge", lambda q: "E").hit
    with pytest.raises(ValueError):
        SemanticCache(embedder(TABLE), threshold=1.5)


def test_lru_eviction():
    store = InMemoryStore(max_entries=2)
    cache = SemanticCache(embedder(TABLE), threshold=0.99, store=store)
    cache.get_or_compute("a", lambda q: "A")
    cache.get_or_compute("b", lambda q: "B")
    assert cache.get_or_compute("a", lambda q: "A2").hit               # touches "a": "b" is now oldest
    cache.get_or_compute("c", lambda q: "C")                           # evicts "b"
    assert len(store) == 2 and store.evictions == 1
    assert not cache.get_or_compute("b", lambda q: "B2").hit
    assert cache.get_or_compute("c", lambda q: "x").answer == "C"


def test_concurrent_use_counts_every_call():
    rng = np.random.default_rng(0)
    vecs = {f"q{i}": rng.normal(size=16) for i in range(50)}
    cache = SemanticCache(embedder(vecs), threshold=0.999, store=InMemoryStore(1000))
    def work():
        for i in range(50):
            cache.get_or_compute(f"q{i}", lambda q: q.upper())
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.hits + cache.misses == 200 and cache.misses >= 50
    for i in range(50):
        assert cache.get_or_compute(f"q{i}", lambda q: "never").answer == f"Q{i}"


def test_json_persistence_round_trip_and_refusals(tmp_path):
    store = InMemoryStore()
    store.add(Entry("a", "A", np.array([1, 0, 0], np.float32)))
    store.save(tmp_path / "c.json")
    back = InMemoryStore.load(tmp_path / "c.json")
    sim, e = back.search(np.array([1, 0, 0], np.float32))
    assert sim == pytest.approx(1) and e.answer == "A"
    (tmp_path / "bad.json").write_text('{"format": "pickle"}')
    with pytest.raises(ValueError, match="not a semantic cache"):
        InMemoryStore.load(tmp_path / "bad.json")
    assert b"pickle" not in (tmp_path / "c.json").read_bytes()
