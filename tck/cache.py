"""The fleet's cache: `tck cache serve` (a private Redis) and `tck bench-semantic` (its lookup latency)."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_cache_serve(a) -> int:
    """Start redis-server on loopback with a random password until Ctrl-C or SIGTERM; print the URL to
    export, or with --url-file write it there (0600, removed again on stop) and print the file's export
    instead, so the password never reaches the terminal."""
    from clients.redis_cache import (REDIS_URL_ENV, REDIS_URL_FILE_ENV, LocalRedis, check_url_file, remove_url_file,
                                     write_url_file)
    if a.url_file:
        a.url_file = check_url_file(a.url_file)           # a bad path fails before the server starts
    with LocalRedis(maxmemory_mb=a.maxmemory_mb, port=a.port) as r:
        _say(f"redis-server on {r.bind}:{r.port}: maxmemory {r.maxmemory_mb} MB, {r.policy}, persistence off, "
             f"password required; Ctrl-C stops it (its entries go with it)")
        if a.url_file:
            write_url_file(a.url_file, r.url)
            print(f"export {REDIS_URL_FILE_ENV}='{a.url_file}'", flush=True)
        else:
            print(f"export {REDIS_URL_ENV}='{r.url}'", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        try:
            return _until_stopped(r)
        finally:
            if a.url_file:
                remove_url_file(a.url_file, r.url)


def _until_stopped(r) -> int:
    try:
        while r.alive():
            time.sleep(0.5)
    except KeyboardInterrupt:
        _say("cache serve: stopped")
        return 0
    _say(f"cache serve: redis-server exited: {r.log_tail()}")
    return 1


def cmd_bench_semantic(a) -> int:
    from perf.errors import BadSettings
    from perf.measure.results import save
    from perf.measure.semantic_bench import run
    if a.record and a.rounds < 5:
        raise BadSettings(f"--record with --rounds {a.rounds}: a committed record takes at least 5 rounds")
    rec = run(rounds=a.rounds, lookups=a.lookups, progress=_say)
    path = save(rec, name="semantic-cache")
    if a.record:
        from perf.reports.records import record_bench_semantic, render_readme
        _say(f"record: {record_bench_semantic(rec)}; README {'updated' if render_readme() else 'unchanged'}")
    for s in rec.sizes:
        _say(f"{s.entries:>7,} entries: lookup p50 {s.lookup_p50.median:.3f} ms, scan {s.scan_p50.median:.3f} ms")
    _say(f"bench-semantic: PASSED; {path}")
    print(path)
    return 0


def add_commands(sub) -> None:
    s = sub.add_parser("cache", help="the fleet's shared cache: `tck cache serve` starts a private redis-server")
    cs = s.add_subparsers(dest="cache_command", required=True)
    c = cs.add_parser("serve", help="redis-server on loopback, random password, memory bound, no persistence")
    c.add_argument("--maxmemory-mb", type=int, default=256)
    c.add_argument("--port", type=int, default=0, help="0: a free port")
    c.add_argument("--url-file", type=Path, default=None,
                   help="write the URL (with its password) to this file instead of printing it, mode 0600, removed "
                        "on stop; clients read it through TCK_REDIS_URL_FILE")
    c.set_defaults(fn=cmd_cache_serve)

    s = sub.add_parser("bench-semantic", help="`make bench-semantic`: the Redis semantic cache's lookup latency "
                                              "at 1k / 10k / 100k entries -> results/")
    s.add_argument("--rounds", type=int, default=5)
    s.add_argument("--lookups", type=int, default=300, help="lookups per size per round")
    s.add_argument("--record", action="store_true", help="also write records/bench-semantic-cache.json and the README lines")
    s.set_defaults(fn=cmd_bench_semantic)
