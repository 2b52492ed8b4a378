"""A semantic cache for generation/classification calls (the caching lever for text models).

Before calling an expensive model, embed the query (with the served encoder) and return the stored
answer of the most similar earlier query when its cosine similarity is >= ``threshold``.

Stores are pluggable: ``EmbeddingStore`` is the interface a Redis or vector-database store
implements; ``InMemoryStore`` (the default) keeps a bounded matrix with LRU eviction. Entries are
persisted as JSON only (never pickle: a cache file may come from elsewhere). Thread-safe.
"""

from __future__ import annotations

import json
import threading
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
