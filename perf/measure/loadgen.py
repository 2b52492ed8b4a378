"""Our own open-loop load generator over tritonclient's asyncio clients, for what perf_analyzer does
not do: replaying a request trace and recording every request's latency.

Arrivals are scheduled in advance (Poisson, constant, or a trace file); each request is sent at its
scheduled time whether or not earlier ones came back (open loop). ``lateness`` (send time minus
scheduled time) tells when the client, not the server, limited the measurement; then use more
processes (``processes=N`` splits the schedule across N processes started at one instant).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from perf.errors import BadSettings

LATE_P95_MS = 2.0        # sends this late at p95 (or half the mean gap between arrivals, if larger)
RATE_SHORTFALL = 0.05    # ...or a send span that overran the schedule by 5 %: the client is the bottleneck


def poisson_arrivals(rate: float, duration_s: float, seed: int = 0) -> np.ndarray:
    if rate <= 0 or duration_s <= 0:
        raise BadSettings("--rate and --duration-s must be > 0")
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, size=int(rate * duration_s * 1.5) + 16)
    t = np.cumsum(gaps)
    return t[t < duration_s]


def constant_arrivals(rate: float, duration_s: float) -> np.ndarray:
    if rate <= 0 or duration_s <= 0:
        raise BadSettings("--rate and --duration-s must be > 0")
    return np.arange(0.0, duration_s, 1.0 / rate)


def read_trace(path: Path, speedup: float = 1.0) -> np.ndarray:
    """A trace file: one arrival timestamp in seconds per line (or a JSON list); rebased to start at 0."""
    try:
        text = Path(path).read_text().strip()
    except OSError as e:
        raise BadSettings(f"--trace {path}: cannot read it ({e})") from e
    ts = np.asarray(json.loads(text) if text.startswith("[") else [float(x.split(",")[0]) for x in text.splitlines()
                                                                   if x.strip() and not x.startswith("#")], float)
    if ts.size == 0:
        raise BadSettings(f"--trace {path}: no timestamps")
    if np.any(np.diff(ts) < 0):
        raise BadSettings(f"--trace {path}: timestamps must be non-decreasing")
    return (ts - ts[0]) / speedup


@dataclass
class LoadResult:
    scheduled: int
    ok: int
    errors: int
    duration_s: float
    throughput_per_s: float
    offered_per_s: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    lateness_p95_ms: float
    lateness_max_ms: float
    client_limited: bool
    verdict: str
    processes: int
    error_examples: list[str]
    shed: int = 0              # of the errors, the requests the server shed (Overloaded): rejections, not faults

    def as_dict(self) -> dict:
        return asdict(self)


async def _run(url: str, model: str, protocol: str, samples: list[dict], order: np.ndarray, offsets: np.ndarray,
               start_at: float, timeout_s: float) -> list[tuple[float, float, float, str]]:
    from clients import AsyncTritonClient, ClientError, Overloaded

    records: list[tuple[float, float, float, str]] = []   # scheduled, sent, latency (s), error
    async with AsyncTritonClient(url, model, protocol, timeout_s) as c:
        prepared = [await c.prepare(s) for s in samples]   # serialize each sample once, not per request

        async def one(sched: float, idx: int) -> None:
            sent = time.time()
            try:
                await c.infer_prepared(prepared[idx])
                records.append((sched, sent, time.time() - sent, ""))
            except Overloaded as e:      # counted apart: what perf_analyzer aborts on, measured here
                records.append((sched, sent, time.time() - sent, SHED + str(e)[:300]))
            except ClientError as e:
                records.append((sched, sent, time.time() - sent, str(e)[:300]))

        tasks = []
        while time.time() < start_at:
            await asyncio.sleep(min(0.05, start_at - time.time()))
        for off, idx in zip(offsets, order):
            due = start_at + off
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(due, int(idx))))
        await asyncio.gather(*tasks)
    return records


SHED = "shed: "


def _worker(args) -> list[tuple[float, float, float, str]]:
    infer_key, *rest = args
    if infer_key:                    # a spawned process does not know the keys of the servers its parent runs
        from clients.server import INFER_KEY_ENV
        os.environ[INFER_KEY_ENV] = infer_key
    return asyncio.run(_run(*rest))


def run_open_loop(url: str, model: str, samples: Sequence[dict], offsets: np.ndarray, order: np.ndarray | None = None,
                  protocol: str = "grpc", processes: int = 1, timeout_s: float = 30.0,
                  spawn: bool = False) -> tuple[LoadResult, np.ndarray]:
    """Send ``samples[order[i]]`` at ``offsets[i]`` seconds; returns the summary and per-request records
    (columns: scheduled offset s, lateness s, latency s, ok 0/1). ``spawn``: send from a spawned process
    even when there is one, so that the caller's heap and threads (a test session's, hundreds of MB of
    torch and ONNX by then) cost the generator nothing; it runs on the calling thread's cores."""
    offsets = np.asarray(offsets, float)
    if offsets.size == 0:
        raise BadSettings("no arrivals to send: raise --rate or --duration-s")
    order = np.arange(offsets.size) % len(samples) if order is None else np.asarray(order)
    samples = list(samples)
    start_at = time.time() + 0.5 + 0.5 * processes + (1.0 if spawn else 0.0)   # spawned: time to import
    if processes <= 1 and not spawn:
        recs = asyncio.run(_run(url, model, protocol, samples, order, offsets, start_at, timeout_s))
    else:
        from clients.server import infer_key_for
        key = infer_key_for(url) if protocol == "http" else None
        processes = max(processes, 1)
        jobs = [(key, url, model, protocol, samples, order[i::processes], offsets[i::processes], start_at, timeout_s)
                for i in range(processes)]
        with mp.get_context("spawn").Pool(processes) as pool:
            recs = [r for part in pool.map(_worker, jobs) for r in part]
    recs.sort()
    sched = np.array([r[0] for r in recs]) - start_at
    sent = np.array([r[1] for r in recs]) - start_at
    lat = np.array([r[2] for r in recs])
    ok = np.array([r[3] == "" for r in recs])
    late = sent - sched
    done = sent + lat
    duration = float(done.max() - sched.min()) if recs else 0.0
    lat_ok = lat[ok] * 1e3 if ok.any() else np.array([np.nan])
    span_sched = float(offsets.max() - offsets.min()) or 1e-9
    span_sent = float(sent.max() - sent.min())
    late_p95 = float(np.percentile(late, 95) * 1e3)
    # Jitter of a couple of ms on a busy machine does not distort a schedule whose gaps are much longer;
    # lateness comparable to the gaps (or an overrun) does.
    late_bound_ms = max(LATE_P95_MS, 0.5 * span_sched / max(offsets.size - 1, 1) * 1e3)
    limited = late_p95 > late_bound_ms or span_sent > span_sched * (1 + RATE_SHORTFALL) + 0.01
    verdict = (f"client-limited: sends were late (p95 {late_p95:.2f} ms, span {span_sent:.2f} s for a "
               f"{span_sched:.2f} s schedule); use more processes or perf_analyzer" if limited else "server-limited or unsaturated")
    res = LoadResult(
        scheduled=int(offsets.size), ok=int(ok.sum()), errors=int((~ok).sum()), duration_s=duration,
        throughput_per_s=float(ok.sum() / duration) if duration else 0.0,
        offered_per_s=float(offsets.size / span_sched),
        p50_ms=float(np.percentile(lat_ok, 50)), p90_ms=float(np.percentile(lat_ok, 90)),
        p95_ms=float(np.percentile(lat_ok, 95)), p99_ms=float(np.percentile(lat_ok, 99)),
        lateness_p95_ms=late_p95, lateness_max_ms=float(late.max() * 1e3), client_limited=bool(limited),
        verdict=verdict, processes=processes, error_examples=sorted({r[3] for r in recs if r[3]})[:3],
        shed=sum(1 for r in recs if r[3].startswith(SHED)),
    )
    table = np.column_stack([sched, late, lat, ok.astype(float)])
    return res, table
