"""A semantic cache for generation/classification calls (the caching lever for text models).

Before calling an expensive model, embed the query (with the served encoder) and return the stored
answer of the most similar earlier query when its cosine similarity is >= ``threshold``.

Stores are pluggable (``EmbeddingStore``): ``InMemoryStore`` (the default) keeps a bounded matrix with
LRU eviction in one process, persisted as JSON only (never pickle: a cache file may come from
elsewhere); ``RedisEmbeddingStore`` shares the entries of every replica through one Redis, each
replica searching a local copy kept in sync. Thread-safe.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class Entry:
    query: str
    answer: str
    vector: np.ndarray


class EmbeddingStore(Protocol):
    def search(self, vector: np.ndarray, min_similarity: float = -1.0) -> tuple[float, Entry] | None:
        """The most similar entry if its cosine is >= min_similarity (a hit counts as a use), else None."""
    def add(self, entry: Entry) -> None: ...
    def __len__(self) -> int: ...


class InMemoryStore:
    """Bounded store: cosine search over a matrix; least-recently-used entries are evicted."""

    def __init__(self, max_entries: int = 10_000):
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self._entries: OrderedDict[int, Entry] = OrderedDict()
        self._next = 0
        self._lock = threading.RLock()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def search(self, vector: np.ndarray, min_similarity: float = -1.0) -> tuple[float, Entry] | None:
        with self._lock:
            if not self._entries:
                return None
            keys = list(self._entries)
            mat = np.stack([self._entries[k].vector for k in keys])
            sims = mat @ vector
            i = int(np.argmax(sims))
            if sims[i] < min_similarity:
                return None                              # a miss must not refresh anything
            self._entries.move_to_end(keys[i])          # a hit is a use
            return float(sims[i]), self._entries[keys[i]]

    def add(self, entry: Entry) -> None:
        with self._lock:
            self._entries[self._next] = entry
            self._next += 1
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
                self.evictions += 1

    def save(self, path: Path) -> None:
        with self._lock:
            data = [{"query": e.query, "answer": e.answer, "vector": e.vector.astype(float).tolist()}
                    for e in self._entries.values()]
        Path(path).write_text(json.dumps({"format": "semantic-cache/1", "entries": data}))

    @classmethod
    def load(cls, path: Path, max_entries: int = 10_000) -> "InMemoryStore":
        doc = json.loads(Path(path).read_text())
        if doc.get("format") != "semantic-cache/1":
            raise ValueError(f"{path} is not a semantic cache file")
        store = cls(max_entries)
        for e in doc["entries"]:
            if not isinstance(e.get("query"), str) or not isinstance(e.get("answer"), str):
                raise ValueError(f"{path}: entries need string query and answer")
            store.add(Entry(e["query"], e["answer"], _unit(np.asarray(e["vector"], np.float32))))
        return store


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    if not np.isfinite(n) or n == 0:
        raise ValueError("embedding has zero or non-finite norm")
    return (v / n).astype(np.float32)


@dataclass
class Lookup:
    answer: str
    hit: bool
    similarity: float | None
    matched_query: str | None


@dataclass
class SemanticCache:
    embed: Callable[[Sequence[str]], np.ndarray]
    threshold: float = 0.8
    store: EmbeddingStore = field(default_factory=InMemoryStore)
    hits: int = 0
    misses: int = 0

    def __post_init__(self) -> None:
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {self.threshold}")
        self._lock = threading.Lock()

    def lookup(self, query: str) -> tuple[np.ndarray, tuple[float, Entry] | None]:
        v = _unit(np.asarray(self.embed([query]), np.float32).reshape(-1))
        return v, self.store.search(v, self.threshold)

    def get_or_compute(self, query: str, compute: Callable[[str], str]) -> Lookup:
        v, found = self.lookup(query)
        if found is not None:
            with self._lock:
                self.hits += 1
            return Lookup(found[1].answer, True, found[0], found[1].query)
        answer = compute(query)
        self.store.add(Entry(query, answer, v))
        with self._lock:
            self.misses += 1
        return Lookup(answer, False, None, None)

    @property
    def hit_rate(self) -> float:
        n = self.hits + self.misses
        return self.hits / n if n else 0.0


class TritonEmbedder:
    """Embeds strings with the served text ensemble (BYTES in, embedding out)."""

    def __init__(self, url: str, model: str = "minilm_text_int8", protocol: str = "http", timeout_s: float = 30.0):
        from clients.client import TritonClient
        self.client = TritonClient(url, model, protocol, timeout_s)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Embeds any number of texts, in requests of at most the model's max_batch_size."""
        step = self.client.metadata().max_batch_size or len(texts)
        arr = np.array([[t.encode("utf-8")] for t in texts], dtype=object)
        return np.concatenate([self.client.infer({"TEXT": arr[i:i + step]})["embedding"] for i in range(0, len(arr), step)])

    def close(self) -> None:
        self.client.close()


@dataclass
class StoreStats:
    synced: int = 0            # entries taken in from other replicas (the insert stream or a resync)
    resyncs: int = 0
    refused: int = 0           # stored entries that are not this encoder's vectors (wrong size, not unit, bad text)
    errors: int = 0            # Redis calls that failed or timed out: the replica searched what it had
    added: int = 0


def _sid(raw: bytes | str) -> tuple[int, int]:
    ms, _, seq = (raw.decode() if isinstance(raw, bytes) else raw).partition("-")
    return int(ms), int(seq or 0)


class RedisEmbeddingStore:
    """Semantic-cache entries shared by every replica through one Redis (7.0: no vector index).

    Each entry is a Redis hash ``<ns>:sem:<encoder>:e:<id>`` (query, answer, the encoder's normalised
    embedding as float32 bytes, its expiry) with the TTL; its id goes onto the stream
    ``<ns>:sem:<encoder>:log``. Each replica keeps a local numpy index: a full resync on start (SCAN of
    the entries), then the stream's new ids before each search (one round trip). ``encoder`` is the
    encoder's digest: another encoder's vectors are never compared. Redis down or slow: the replica
    searches what it has, adds locally, counts the error, and resyncs when Redis is back."""

    def __init__(self, url: str, encoder: str, dim: int, ttl_s: float = 86_400.0, namespace: str = "tck",
                 timeout_s: float = 0.05, stream_max: int = 1_000_000, max_text_bytes: int = 64 << 10,
                 retry_after_s: float = 1.0):
        from clients.redis_cache import connect
        if dim < 1 or ttl_s <= 0:
            raise ValueError("dim must be >= 1 and ttl_s > 0")
        self.encoder, self.dim, self.ttl_s = encoder, dim, ttl_s
        self.prefix = f"{namespace}:sem:{encoder}"
        self.stream = f"{self.prefix}:log"
        self.stream_max, self.max_text_bytes, self.retry_after_s = stream_max, max_text_bytes, retry_after_s
        self.redis = connect(url, timeout_s)
        self.stats = StoreStats()
        self._lock = threading.RLock()
        self._mat = np.zeros((1024, dim), np.float32)
        self._exp = np.zeros(1024, np.float64)
        self._entries: list[Entry] = []
        self._ids: dict[str, int] = {}
        self._last = "0-0"
        self._stale = True            # a resync is due (start, or after an error)
        self._skip_until = 0.0

    # -- the local index
    def _put(self, eid: str, entry: Entry, expires: float) -> None:
        if eid in self._ids:
            return
        n = len(self._entries)
        if n == len(self._mat):
            self._mat = np.concatenate([self._mat, np.zeros_like(self._mat)])
            self._exp = np.concatenate([self._exp, np.zeros_like(self._exp)])
        self._mat[n], self._exp[n] = entry.vector, expires
        self._entries.append(entry)
        self._ids[eid] = n

    def _reset(self) -> None:
        self._mat[:] = 0
        self._exp[:] = 0
        self._entries, self._ids = [], {}

    def __len__(self) -> int:
        with self._lock:
            return int((self._exp[:len(self._entries)] > time.time()).sum())

    def _decode(self, fields: dict) -> tuple[Entry, float] | None:
        try:
            q, a = fields[b"q"].decode("utf-8"), fields[b"a"].decode("utf-8")
            v = np.frombuffer(fields[b"v"], np.float32)
            exp = float(fields[b"x"])
        except (KeyError, UnicodeDecodeError, ValueError):
            self.stats.refused += 1
            return None
        if v.shape != (self.dim,) or not np.isfinite(v).all() or abs(float(np.linalg.norm(v)) - 1.0) > 1e-3:
            self.stats.refused += 1
            return None
        return Entry(q, a, v.copy()), exp

    # -- Redis
    def _failed(self) -> None:
        self.stats.errors += 1
        self._stale = True
        self._skip_until = time.monotonic() + self.retry_after_s

    def _fetch(self, eids: Sequence[str]) -> None:
        if not eids:
            return
        pipe = self.redis.pipeline(transaction=False)
        for eid in eids:
            pipe.hgetall(f"{self.prefix}:e:{eid}")
        for eid, fields in zip(eids, pipe.execute()):
            got = self._decode(fields) if fields else None
            if got is not None:
                self._put(eid, *got)
                self.stats.synced += 1

    def resync(self) -> None:
        """Rebuild the local index from every live entry in Redis (what a replica does on start)."""
        import redis
        with self._lock:
            try:
                last = self.redis.xrevrange(self.stream, count=1)
                self._reset()
                batch: list[str] = []
                start = len(self.prefix) + 3
                for key in self.redis.scan_iter(match=f"{self.prefix}:e:*", count=1000):
                    batch.append(key.decode()[start:])
                    if len(batch) == 1000:
                        self._fetch(batch)
                        batch = []
                self._fetch(batch)
                self._last = last[0][0].decode() if last else "0-0"
                self._stale = False
                self.stats.resyncs += 1
            except (redis.RedisError, OSError):
                self._failed()

    def sync(self) -> None:
        """Take in what other replicas added since the last sync (a resync when one is due)."""
        import redis
        if time.monotonic() < self._skip_until:
            return
        if self._stale:
            self.resync()
            return
        with self._lock:
            try:
                pipe = self.redis.pipeline(transaction=False)
                pipe.xrange(self.stream, count=1)
                pipe.xread({self.stream: self._last}, count=10_000)
                first, got = pipe.execute()
                if first and self._last != "0-0" and _sid(first[0][0]) > _sid(self._last):
                    self.resync()                        # the stream was trimmed past what we read: start again
                    return
                if not got:
                    return
                msgs = got[0][1]
                self._fetch([f[b"id"].decode() for _, f in msgs if b"id" in f and f[b"id"].decode() not in self._ids])
                self._last = msgs[-1][0].decode()
            except (redis.RedisError, OSError):
                self._failed()

    def search(self, vector: np.ndarray, min_similarity: float = -1.0) -> tuple[float, Entry] | None:
        self.sync()
        with self._lock:
            n = len(self._entries)
            if n == 0:
                return None
            sims = self._mat[:n] @ vector
            sims[self._exp[:n] <= time.time()] = -np.inf
            i = int(np.argmax(sims))
            if not sims[i] >= min_similarity:
                return None
            return float(sims[i]), self._entries[i]

    def add(self, entry: Entry) -> None:
        import uuid

        import redis
        if len(entry.query.encode()) > self.max_text_bytes or len(entry.answer.encode()) > self.max_text_bytes:
            return                                       # too large to share; the next replica computes it
        v = np.asarray(entry.vector, np.float32).reshape(-1)
        if v.shape != (self.dim,):
            raise ValueError(f"embedding has {v.size} values, this store holds {self.dim}")
        eid, expires = uuid.uuid4().hex, time.time() + self.ttl_s
        with self._lock:
            self._put(eid, Entry(entry.query, entry.answer, v), expires)
            self.stats.added += 1
            if time.monotonic() < self._skip_until:
                return
            try:
                pipe = self.redis.pipeline(transaction=True)
                key = f"{self.prefix}:e:{eid}"
                pipe.hset(key, mapping={"q": entry.query, "a": entry.answer, "v": v.tobytes(), "x": repr(expires)})
                pipe.pexpire(key, max(1, int(self.ttl_s * 1000)))
                pipe.xadd(self.stream, {"id": eid}, maxlen=self.stream_max, approximate=True)
                pipe.execute()
            except (redis.RedisError, OSError):
                self._failed()

    def close(self) -> None:
        try:
            self.redis.close()
        except Exception:  # noqa: BLE001
            pass
