"""`make bench-semantic`: the shared semantic cache's lookup latency against the number of entries.

One real redis-server holds N entries (N = 1k, 10k, 100k; 384-dim float32 embeddings, MiniLM's size)
in a namespace per N. In each round, for each N in turn (the order alternating between rounds), a
fresh replica resyncs from Redis (what a pod does on start) and then looks up random unit queries:
a lookup is the sync round trip to Redis plus the exact numpy scan of its local copy, and the scan
alone is timed too. The scan grows linearly with N; the record says at what N it reaches 1 ms and
5 ms at the measured rate, the points where an ANN index or a Redis with vector search starts to pay.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, ClassVar, Sequence

import numpy as np

from build_engines.records import Record
from perf.measure.replicates import interval, schedule
from perf.measure.results import Interval

SIZES = (1_000, 10_000, 100_000)
DIM = 384


@dataclasses.dataclass
class SizeResult:
    entries: int
    lookup_p50_ms: list[float]          # per round: the whole lookup (sync round trip + scan)
    lookup_p99_ms: list[float]
    scan_p50_ms: list[float]            # per round: the scan of the local copy alone
    resync_s: list[float]               # per round: a fresh replica's full resync
    lookup_p50: Interval                # median over rounds, bootstrap interval (ms, not a ratio)
    scan_p50: Interval
    replica_mb: float                   # the local copy's matrix
    redis_used_mb: float                # Redis's memory with this N loaded (all namespaces so far)


@dataclasses.dataclass(kw_only=True)
class SemanticBenchRecord(Record):
    KIND: ClassVar[str] = "bench-semantic"
    WRITER: ClassVar[str] = "make bench-semantic"
    command: str
    redis: str
    dim: int
    rounds: int
    lookups: int                        # per size per round
    sizes: list[SizeResult]
    scan_ns_per_entry: float            # the largest size's median scan / entries
    entries_at_1ms: int                 # where the scan alone reaches 1 ms and 5 ms at that rate
    entries_at_5ms: int


def _fill(url: str, encoder: str, n: int, rng: np.random.Generator) -> None:
    from clients.redis_cache import connect
    r = connect(url, 30.0)
    expires = repr(time.time() + 86_400)
    for start in range(0, n, 1000):
        pipe = r.pipeline(transaction=False)
        v = rng.normal(size=(min(1000, n - start), DIM)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        for i, row in enumerate(v):
            key = f"tck:sem:{encoder}:e:{start + i:08d}"
            pipe.hset(key, mapping={"q": f"query {start + i}", "a": f"answer {start + i}", "v": row.tobytes(), "x": expires})
            pipe.expire(key, 86_400)
        pipe.xadd(f"tck:sem:{encoder}:log", {"id": "filled"})
        pipe.execute()
    r.close()


def _one(url: str, n: int, lookups: int, rng: np.random.Generator) -> tuple[float, float, float, float, float]:
    from clients.semantic_cache import RedisEmbeddingStore
    store = RedisEmbeddingStore(url, encoder=f"bench-{n}", dim=DIM, timeout_s=5.0)
    t0 = time.perf_counter()
    store.resync()
    resync = time.perf_counter() - t0
    if len(store) != n:
        raise RuntimeError(f"resync took in {len(store)} entries of {n}")
    q = rng.normal(size=(lookups, DIM)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    whole, scan = [], []
    for v in q:
        t = time.perf_counter()
        store.search(v, 0.99)
        whole.append(time.perf_counter() - t)
        t = time.perf_counter()
        _ = store._mat[:n] @ v
        scan.append(time.perf_counter() - t)
    store.close()
    w, s = np.asarray(whole) * 1e3, np.asarray(scan) * 1e3
    return float(np.median(w)), float(np.percentile(w, 99)), float(np.median(s)), resync, n * DIM * 4 / 2**20


def run(sizes: Sequence[int] = SIZES, rounds: int = 5, lookups: int = 300, command: str = "make bench-semantic",
        progress: Callable[[str], None] = print) -> SemanticBenchRecord:
    from clients.redis_cache import LocalRedis, connect
    rng = np.random.default_rng(0)
    need_mb = int(sum(sizes) * (DIM * 4 + 400) / 2**20 * 1.5) + 64
    with LocalRedis(maxmemory_mb=need_mb) as srv:
        r = connect(srv.url, 5.0)
        version = r.info("server")["redis_version"]
        used = {}
        for n in sizes:
            progress(f"filling {n:,} entries")
            _fill(srv.url, f"bench-{n}", n, rng)
            used[n] = r.info("memory")["used_memory"] / 2**20
        if r.info("stats")["evicted_keys"]:
            raise RuntimeError("Redis evicted entries while filling: raise maxmemory")
        per: dict[int, list[tuple]] = {n: [] for n in sizes}
        for k, order in enumerate(schedule([str(n) for n in sizes], rounds)):
            for label in order:
                n = int(label)
                per[n].append(_one(srv.url, n, lookups, rng))
                progress(f"round {k + 1}/{rounds} {n:>7,} entries: lookup p50 {per[n][-1][0]:.3f} ms, "
                         f"scan {per[n][-1][2]:.3f} ms, resync {per[n][-1][3]:.2f} s")
        r.close()
    results = []
    for n in sizes:
        cols = list(zip(*per[n]))
        results.append(SizeResult(n, list(cols[0]), list(cols[1]), list(cols[2]), list(cols[3]), interval(cols[0]),
                                  interval(cols[2]), cols[4][0], used[n]))
    big = results[-1]
    ns = big.scan_p50.median * 1e6 / big.entries
    return SemanticBenchRecord(command=command, redis=version, dim=DIM, rounds=rounds, lookups=lookups, sizes=results,
                               scan_ns_per_entry=ns, entries_at_1ms=int(1e6 / ns), entries_at_5ms=int(5e6 / ns))
