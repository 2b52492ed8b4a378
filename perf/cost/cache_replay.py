"""The response cache's hit rate on the user's own traffic, replayed through a real Redis.

A request log (``--request-log``) has one request per line, in any of three forms ('#' comments):

- ``KEY``: an input hash (any id that is equal for equal inputs), no timestamp;
- ``T KEY``: a timestamp in seconds (any origin: Unix time, seconds since start) and the key;
- a JSON object ``{"t": T, "key": KEY}`` or ``{"t": T, "inputs": {"name": [...], ...}}``: the inputs
  are keyed as the shared cache keys them (name, dtype from the spec, shape, bytes; the spec's
  ``[cache] ignore_inputs`` left out).

The fleet's N replicas sit behind a load balancer that sends each request to one of them (at random,
as kube-proxy's iptables mode does). Both ways of caching are replayed through redis-server, each
value the size of the model's real answer:

- **per pod** (Triton's local response cache): N caches, each seeing its replica's share, each bounded
  by the pod's cache size, LRU, no TTL (Triton's local cache has none);
- **shared** (clients/redis_cache.py): one cache seeing all requests, bounded by its memory, LRU,
  with the spec's TTL judged on the log's clock (when it has timestamps).

A hit's latency is timed on the shared replay's real Redis round trips (loopback here: a network hop
in a cluster adds to it), and so is what a miss adds before and after the model (its GET, then its SET).
The bill uses the shared hit rate's lower 95 % bound (``hit_rate_bound``), not the rate itself: a log of
200 requests with 3 distinct ones measures 98.5 % and would claim 66x fewer model calls; its bound,
96.3 %, claims 27x; the longer the log, the closer the bound comes to the rate measured.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from perf.errors import CostError

BALANCER = "random (as kube-proxy's iptables mode), seed 0"
BOUND_Z = 1.645          # one-sided 95 %: the hit rate the bill may count on


@dataclass(frozen=True)
class LoggedRequest:
    t: float | None
    key: str


@dataclass
class CacheReplay:
    """What the user's request log does to a per-pod and to a shared cache (measured on redis-server)."""

    source: str
    requests: int
    distinct: int
    timestamps: bool
    replicas: int
    balancer: str
    ttl_s: float | None                 # the shared cache's TTL on the log's clock (None: the log has no timestamps)
    value_bytes: int                    # one stored answer of this model
    shared_memory_mb: int
    pod_memory_mb: int
    shared_hit_rate: float
    per_pod_hit_rate: float             # all pods together
    per_pod_hit_rates: list[float]      # each pod's own
    shared_expired: int                 # found in the cache but older than the TTL: a miss
    shared_evicted: int
    per_pod_evicted: int
    hit_p50_ms: float | None            # a shared hit: one Redis GET round trip (None: no hit in the log)
    hit_p99_ms: float | None
    redis: str                          # redis-server's version
    miss_p99_ms: float | None = None    # what a miss adds to the model's latency: its GET, then its SET
    shared_hit_bound: float | None = None   # hit_rate_bound(shared hits, requests): what the bill counts on
                                            # (None: a campaign written before it, priced at the rate itself)


def hit_rate_bound(hits: int, requests: int, z: float = BOUND_Z) -> float:
    """The Wilson score interval's lower end for ``hits`` of ``requests`` (one-sided, ``z``): the hit rate a
    bill may count on from a log of this size. It takes the requests as independent draws, which a log's
    repeats are not; it is there so that a short log cannot promise what a long one would have to show,
    and it is below 1 for any finite log (no clamp needed to divide by the misses)."""
    if requests <= 0:
        return 0.0
    p, n, z2 = hits / requests, requests, z * z
    centre = p + z2 / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z2 / n))


def _key_of_inputs(inputs: Mapping, dtypes: Mapping[str, np.dtype], ignore: Sequence[str], where: str) -> str:
    from clients.redis_cache import request_digest
    if not isinstance(inputs, dict):
        raise CostError(f"{where}: 'inputs' must be an object of input name -> nested list")
    missing = sorted(set(dtypes) - set(inputs) - set(ignore))
    if missing:
        raise CostError(f"{where}: inputs {missing} are missing (the model takes {sorted(dtypes)})")
    try:
        arrays = {n: np.asarray(inputs[n], dtype=dtypes[n]) for n in dtypes if n in inputs}
    except (ValueError, TypeError) as e:
        raise CostError(f"{where}: an input does not convert to the model's dtype ({e})") from e
    return request_digest(arrays, ignore)


def _parse(line: str, dtypes: Mapping[str, np.dtype], ignore: Sequence[str], where: str) -> LoggedRequest:
    if line.startswith("{"):
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as e:
            raise CostError(f"{where}: not valid JSON ({e.msg})") from e
        t = doc.get("t")
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not np.isfinite(t)):
            raise CostError(f"{where}: 't' must be a number of seconds, got {t!r}")
        if "key" in doc:
            return LoggedRequest(None if t is None else float(t), str(doc["key"]))
        if "inputs" in doc:
            return LoggedRequest(None if t is None else float(t), _key_of_inputs(doc["inputs"], dtypes, ignore, where))
        raise CostError(f"{where}: a JSON line needs 'key' or 'inputs'")
    parts = line.split()
    if len(parts) == 1:
        return LoggedRequest(None, parts[0])
    if len(parts) == 2:
        try:
            t = float(parts[0])
        except ValueError:
            t = float("nan")
        if not np.isfinite(t):
            raise CostError(f"{where}: 'T KEY' lines start with a timestamp in seconds, got {parts[0]!r}")
        return LoggedRequest(t, parts[1])
    raise CostError(f"{where}: a line is KEY, 'T KEY' or a JSON object; got {len(parts)} fields")


def read_request_log(path: Path, dtypes: Mapping[str, np.dtype] | None = None,
                     ignore: Sequence[str] = ()) -> list[LoggedRequest]:
    """The log's requests in time order (stable: equal times keep the file's order)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise CostError(f"{path}: cannot read the request log ({e})") from e
    out = [_parse(ln.strip(), dtypes or {}, ignore, f"{path}:{i}") for i, ln in enumerate(text.splitlines(), 1)
           if ln.strip() and not ln.lstrip().startswith("#")]
    if not out:
        raise CostError(f"{path}: no requests (one per line: KEY, 'T KEY' or a JSON object with 'inputs')")
    stamped = sum(r.t is not None for r in out)
    if 0 < stamped < len(out):
        raise CostError(f"{path}: {stamped} of {len(out)} requests have a timestamp: give every request one, or none")
    if stamped:
        out.sort(key=lambda r: r.t)
    return out


def _redis_key(key: str) -> str:
    return "r:" + (key if len(key) <= 128 else hashlib.sha256(key.encode()).hexdigest())


def _replay(url: str, requests: Sequence[LoggedRequest], payload: bytes, ttl_s: float | None,
            timed: list[float] | None = None, missed: list[float] | None = None) -> tuple[int, int, int]:
    """Hits, expired and evictions of one cache over these requests (the cache starts empty); ``timed``
    gets each hit's GET in seconds, ``missed`` each miss's GET + SET."""
    from clients.redis_cache import connect
    r = connect(url, 5.0)
    r.flushall()
    evicted0 = r.info("stats")["evicted_keys"]
    hits = expired = 0
    for q in requests:
        k = _redis_key(q.key)
        t0 = time.perf_counter()
        v = r.get(k)
        dt = time.perf_counter() - t0
        if v is not None:
            (stored_at,) = struct.unpack_from("<d", v)
            if ttl_s is None or q.t is None or q.t - stored_at <= ttl_s:
                hits += 1
                if timed is not None:
                    timed.append(dt)
                continue
            expired += 1
        r.set(k, struct.pack("<d", q.t or 0.0) + payload)
        if missed is not None:
            missed.append(time.perf_counter() - t0)
    evicted = r.info("stats")["evicted_keys"] - evicted0
    r.close()
    return hits, expired, evicted


def answer_bytes(spec) -> int:
    """The size of one stored answer of this model (batch 1; a dynamic axis at the spec's typical size)."""
    from clients.redis_cache import encode_outputs
    typical = spec.dynamic_range[1] if spec.dynamic_range else 1
    outs = {t.name: np.zeros((1, *[typical if d == -1 else d for d in t.shape]), np.dtype(t.dtype))
            for t in spec.outputs}
    return len(encode_outputs(outs)) + 8


def replay(path: Path, spec, replicas: int, shared_memory_mb: int = 256, pod_memory_mb: int = 64,
           ttl_s: float | None = None) -> CacheReplay:
    """Replay the log through a per-pod and a shared cache on a private redis-server."""
    from clients.redis_cache import LocalRedis, connect
    if replicas < 1:
        raise CostError(f"replicas must be >= 1, got {replicas}")
    dtypes = {t.name: np.dtype(t.dtype) for t in spec.inputs}
    reqs = read_request_log(path, dtypes, spec.cache.ignore_inputs)
    # Triton's local cache keys on every input: the per-pod replay ignores none
    pod_reqs = read_request_log(path, dtypes) if spec.cache.ignore_inputs else reqs
    ttl = spec.cache.ttl_s if ttl_s is None else ttl_s
    stamped = reqs[0].t is not None
    size = answer_bytes(spec)
    payload = bytes(size - 8)
    pods = np.random.default_rng(0).integers(0, replicas, size=len(reqs))
    timed: list[float] = []
    missed: list[float] = []
    with LocalRedis(maxmemory_mb=shared_memory_mb) as shared:
        hits, expired, evicted = _replay(shared.url, reqs, payload, ttl if stamped else None, timed, missed)
        version = connect(shared.url, 5.0).info("server")["redis_version"]
    pod_hits, pod_rates, pod_evicted = 0, [], 0
    with LocalRedis(maxmemory_mb=pod_memory_mb) as pod:
        for i in range(replicas):
            share = [q for q, p in zip(pod_reqs, pods) if p == i]
            h, _, ev = _replay(pod.url, share, payload, None)
            pod_hits, pod_evicted = pod_hits + h, pod_evicted + ev
            pod_rates.append(h / len(share) if share else 0.0)
    lat = np.asarray(timed) * 1e3
    return CacheReplay(
        source=f"your request log {Path(path).name} ({len(reqs)} requests, {len({q.key for q in reqs})} distinct)",
        requests=len(reqs), distinct=len({q.key for q in reqs}), timestamps=stamped, replicas=replicas, balancer=BALANCER,
        ttl_s=ttl if stamped else None, value_bytes=size, shared_memory_mb=shared_memory_mb, pod_memory_mb=pod_memory_mb,
        shared_hit_rate=hits / len(reqs), per_pod_hit_rate=pod_hits / len(reqs), per_pod_hit_rates=pod_rates,
        shared_expired=expired, shared_evicted=evicted, per_pod_evicted=pod_evicted,
        hit_p50_ms=float(np.median(lat)) if timed else None, hit_p99_ms=float(np.percentile(lat, 99)) if timed else None,
        redis=version, miss_p99_ms=float(np.percentile(np.asarray(missed) * 1e3, 99)) if missed else None,
        shared_hit_bound=hit_rate_bound(hits, len(reqs)))
