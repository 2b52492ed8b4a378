"""The fleet's exact response cache on a real Redis, shared by every replica's clients.

``LocalRedis`` starts Debian's redis-server (unpacked by ``make setup``) on a free loopback port with a
random password, a memory bound (``maxmemory`` + ``allkeys-lru``) and persistence off. ``CachedClient``
and ``AsyncCachedClient`` put an exact cache in front of a ``TritonClient`` / ``AsyncTritonClient``:

- the key is the model, its version and the digest of the artifact the server publishes
  (``source_sha256`` in its config, re-read every ``digest_refresh_s``: a republished model never
  answers from the old one's entries) plus a canonical encoding of every input tensor (name, dtype,
  shape, bytes), minus the inputs ``CachePolicy.ignore_inputs`` names (timestamps, session ids);
- the value is the output tensors as dtype + shape + bytes behind a small header (never pickle), set
  with the model's TTL, refused above ``max_value_bytes``; a value whose names, dtypes or shapes are not
  the model's outputs for that request is poisoned: refused, deleted, never returned;
- Redis down, slow (past ``timeout_s``) or answering garbage never fails a request: it goes to the
  model and counts as a bypass (after an error the cache is skipped for ``retry_after_s``).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import struct
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from clients.client import AsyncTritonClient, ModelMeta, TritonClient
from clients.errors import ClientError, ServerError
from clients.server import TOOLS, _die_with_parent, free_port

REDIS_URL_ENV = "TCK_REDIS_URL"          # redis://:password@host:port/0 of a cache this process did not start
REDIS_URL_FILE_ENV = "TCK_REDIS_URL_FILE"  # or a file holding it (`tck cache serve --url-file`), mode 0600
MAGIC = b"TCK-TENSORS-1\n"
MAX_HEADER_BYTES = 64 << 10
DIGEST_PARAM = "source_sha256"


# ---------------------------------------------------------------- the server


def redis_server_binary() -> Path:
    b = TOOLS / "bin" / "redis-server"
    if not b.exists():
        raise ServerError(f"redis-server not found at {b}: run `make setup` (it unpacks Debian's redis-server 7.0)")
    return b


@dataclass
class LocalRedis:
    """A private redis-server on loopback: random password, memory bound, no persistence, dies with us."""

    maxmemory_mb: int = 64
    policy: str = "allkeys-lru"
    bind: str = "127.0.0.1"
    port: int = 0                       # 0: a free one
    password: str = ""                  # empty: a random one
    persistence: bool = False
    workdir: Path | None = None
    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.port = self.port or free_port()
        self.password = self.password or secrets.token_urlsafe(24)
        if self.maxmemory_mb < 1:
            raise ServerError(f"maxmemory_mb must be >= 1, got {self.maxmemory_mb}")

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@{self.bind}:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self._dir / "redis.log"

    @property
    def _dir(self) -> Path:
        if self.workdir is None:
            self._tmp = self._tmp or tempfile.TemporaryDirectory(prefix="tck-redis-")
            return Path(self._tmp.name)
        return Path(self.workdir)

    def config_text(self) -> str:
        persist = ["appendonly yes", "save 60 1000"] if self.persistence else ["appendonly no", 'save ""']
        return "\n".join([f"bind {self.bind}", f"port {self.port}", "protected-mode yes", f"requirepass {self.password}",
                          f"maxmemory {self.maxmemory_mb}mb", f"maxmemory-policy {self.policy}", *persist,
                          f"dir {self._dir}", f"logfile {self.log_path}", "daemonize no", "databases 1",
                          # no admin from a cache client: these would let one rewrite the config or the disk
                          'rename-command CONFIG ""', 'rename-command DEBUG ""', 'rename-command MODULE ""',
                          'rename-command SLAVEOF ""', 'rename-command REPLICAOF ""', ""])

    def start(self, timeout_s: float = 10.0) -> "LocalRedis":
        conf = self._dir / "redis.conf"
        conf.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)    # the password is in it: ours only
        with os.fdopen(fd, "w") as f:
            f.write(self.config_text())
        self._proc = subprocess.Popen([str(redis_server_binary()), str(conf)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServerError(f"redis-server exited with {self._proc.returncode} on port {self.port}: {self.log_tail()}")
            try:
                if connect(self.url, 0.5).ping():
                    return self
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.05)
        self.stop()
        raise ServerError(f"redis-server did not answer on {self.bind}:{self.port} within {timeout_s:g} s: {self.log_tail()}")

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections, nothing answers (a stalled Redis)."""
        os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self._proc.pid, signal.SIGCONT)

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            try:
                os.kill(self._proc.pid, signal.SIGCONT)
                self._proc.terminate()
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            except ProcessLookupError:
                pass
        self._proc = None

    def restart(self) -> "LocalRedis":
        """Stop and start again on the same port and password (an empty cache: persistence is off)."""
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "LocalRedis":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def write_url_file(path: Path, url: str) -> Path:
    """The URL (password included) in ``path``, readable by its owner only (0600 from its creation, never
    wider for a moment), replaced atomically: a reader sees the old file or the new one, never half."""
    path = check_url_file(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")     # mkstemp creates it 0600
        with os.fdopen(fd, "w") as f:
            f.write(url + "\n")
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise ClientError(f"cannot write the Redis URL file {path} ({e.strerror}): name a file in a folder "
                              "you can write") from None
        raise
    return path


def check_url_file(path: Path) -> Path:
    """``path`` made absolute, or ClientError where no file can be written there (a folder, or a folder that
    does not exist): checked before a server starts, so a bad path costs nothing."""
    path = Path(path).absolute()
    if path.is_dir():
        raise ClientError(f"the Redis URL file {path} is a folder: name a file in it")
    if not path.parent.is_dir():
        raise ClientError(f"cannot write the Redis URL file {path} (no folder {path.parent}): name a file in a "
                          "folder that exists")
    return path


def remove_url_file(path: Path, url: str) -> bool:
    """Remove ``path`` if it still holds ``url`` (another server may have written its own since)."""
    path = Path(path)
    try:
        if path.read_text().strip() != url:
            return False
        path.unlink()
        return True
    except OSError:                 # gone, or no longer ours to remove: the server stops all the same
        return False


def read_url_file(path: Path) -> str:
    """The URL in a file ``write_url_file`` wrote; ClientError where it is missing, empty or readable by
    others (the password is in it)."""
    path = Path(path)
    try:
        mode, url = path.stat().st_mode, path.read_text().strip()
    except OSError as e:
        raise ClientError(f"cannot read the Redis URL file {path} ({e.strerror}): start `tck cache serve "
                          f"--url-file {path}` or unset {REDIS_URL_FILE_ENV}") from None
    if mode & 0o077:
        raise ClientError(f"the Redis URL file {path} is readable by others (mode {mode & 0o777:o}) and holds the "
                          f"password: chmod 600 {path}")
    if not url.startswith(("redis://", "rediss://")):
        raise ClientError(f"the Redis URL file {path} holds no redis:// URL: write one or let `tck cache serve "
                          f"--url-file {path}` write it")
    return url


def url_from_env() -> str | None:
    """TCK_REDIS_URL, else the URL in the file TCK_REDIS_URL_FILE names, else None."""
    if os.environ.get(REDIS_URL_ENV):
        return os.environ[REDIS_URL_ENV]
    f = os.environ.get(REDIS_URL_FILE_ENV)
    return read_url_file(Path(f)) if f else None


def connect(url: str, timeout_s: float):
    """A redis-py client that gives up after ``timeout_s`` per call and never retries (a cache must not
    hold a request up); the password comes in the URL."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                retry=Retry(NoBackoff(), 0), retry_on_timeout=False, health_check_interval=0)


def connect_async(url: str, timeout_s: float):
    import redis.asyncio as aredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    return aredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                 retry=Retry(NoBackoff(), 0), retry_on_timeout=False, health_check_interval=0)


# ---------------------------------------------------------------- keys and values


class Outcome(Enum):
    HIT = "hit"
    MISS = "miss"
    BYPASS = "bypass"          # Redis down, slow or skipped after an error: the model answered
    REFUSED = "refused"        # a stored value that is not this model's answer: deleted, the model answered


@dataclass(frozen=True)
class CachePolicy:
    ttl_s: float = 3600.0
    timeout_s: float = 0.005            # per Redis call; past it the request goes to the model
    max_value_bytes: int = 1 << 20      # larger answers are not stored
    ignore_inputs: tuple[str, ...] = ()  # inputs left out of the key (timestamps, session ids)
    retry_after_s: float = 1.0          # after an error, how long the cache is skipped
    digest_refresh_s: float = 10.0      # how often the served artifact's digest is re-read
    namespace: str = "tck"

    def __post_init__(self) -> None:
        if self.ttl_s <= 0 or self.timeout_s <= 0 or self.max_value_bytes < 1:
            raise ClientError(f"cache policy: ttl_s, timeout_s and max_value_bytes must be > 0 ({self})")
        if isinstance(self.ignore_inputs, str):      # one name, not its letters
            object.__setattr__(self, "ignore_inputs", (self.ignore_inputs,))
        object.__setattr__(self, "ignore_inputs", tuple(self.ignore_inputs))

    @classmethod
    def from_spec(cls, cache, **kw) -> "CachePolicy":
        """The policy a model's spec asks for (its ``[cache]`` table: ttl_s, ignore_inputs)."""
        return cls(ttl_s=cache.ttl_s, ignore_inputs=tuple(cache.ignore_inputs), **kw)


def _le(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<"), copy=False)) if a.dtype.kind != "O" else a


def _object_bytes(a: np.ndarray) -> bytes:
    out = bytearray()
    for x in a.reshape(-1):
        b = x if isinstance(x, bytes) else str(x).encode("utf-8")
        out += struct.pack("<I", len(b)) + b
    return bytes(out)


def _tensor_bytes(a: np.ndarray) -> tuple[str, bytes]:
    if a.dtype.kind in "OSU":
        return "BYTES", _object_bytes(a.astype(object))
    a = _le(a)
    return a.dtype.str, a.tobytes()


def request_digest(inputs: Mapping[str, np.ndarray], ignore: Sequence[str] = ()) -> str:
    """sha256 over every kept input's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(inputs):
        if name in ignore:
            continue
        a = np.asarray(inputs[name])
        dtype, data = _tensor_bytes(a)
        h.update(json.dumps([name, dtype, list(a.shape), len(data)]).encode() + b"\0")
        h.update(data)
    return h.hexdigest()


def cache_key(policy: CachePolicy, model: str, version: str, digest: str, inputs: Mapping[str, np.ndarray]) -> str:
    return f"{policy.namespace}:x:{model}:{version or '-'}:{digest}:{request_digest(inputs, policy.ignore_inputs)}"


def encode_outputs(outputs: Mapping[str, np.ndarray]) -> bytes:
    heads, blobs = [], []
    for name in sorted(outputs):
        a = np.asarray(outputs[name])
        dtype, data = _tensor_bytes(a)
        heads.append({"name": name, "dtype": dtype, "shape": list(a.shape), "bytes": len(data)})
        blobs.append(data)
    head = json.dumps(heads).encode()
    return MAGIC + struct.pack("<I", len(head)) + head + b"".join(blobs)


class Poisoned(ValueError):
    """A stored value that is not a valid answer of this model for this request."""


def _decode_objects(data: bytes, n: int) -> np.ndarray:
    out, i = [], 0
    for _ in range(n):
        if i + 4 > len(data):
            raise Poisoned("truncated BYTES tensor")
        (k,) = struct.unpack_from("<I", data, i)
        out.append(data[i + 4:i + 4 + k])
        i += 4 + k
    if i != len(data):
        raise Poisoned("trailing bytes in a BYTES tensor")
    return np.array(out, dtype=object)


def decode_outputs(value: bytes, meta: ModelMeta, batch: int, names: Sequence[str],
                   max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """The stored answer, only if it is exactly the tensors ``names`` of ``meta`` for a batch of ``batch``."""
    if not isinstance(value, bytes) or not value.startswith(MAGIC) or len(value) < len(MAGIC) + 4:
        raise Poisoned("not a tensor value")
    if max_bytes is not None and len(value) > max_bytes:
        raise Poisoned(f"{len(value)} bytes, over the cap of {max_bytes}")
    (n,) = struct.unpack_from("<I", value, len(MAGIC))
    start = len(MAGIC) + 4
    if n > MAX_HEADER_BYTES or start + n > len(value):
        raise Poisoned(f"header of {n} bytes")
    try:
        heads = json.loads(value[start:start + n])
        parsed = [(str(h["name"]), str(h["dtype"]), [int(d) for d in h["shape"]], int(h["bytes"])) for h in heads]
    except Exception as e:  # noqa: BLE001 - whatever a stored header does (Infinity, 1e400, nesting), it is refused
        raise Poisoned(f"bad header ({type(e).__name__})") from e
    want = {t.name: t for t in meta.outputs}
    if sorted(x[0] for x in parsed) != sorted(names):
        raise Poisoned(f"outputs {[x[0] for x in parsed]}, the request asked for {sorted(names)}")
    out, i = {}, start + n
    for name, dtype, shape, size in parsed:
        t = want.get(name)
        if t is None:
            raise Poisoned(f"{name!r} is not an output of {meta.name}")
        per = shape[1:] if meta.max_batch_size > 0 else shape
        if meta.max_batch_size > 0 and (not shape or shape[0] != batch):
            raise Poisoned(f"{name!r} has batch {shape[:1]}, the request has {batch}")
        if len(per) != len(t.shape) or any(d != -1 and d != s for d, s in zip(t.shape, per)) or any(s < 0 for s in shape):
            raise Poisoned(f"{name!r} has shape {shape}, the model answers {list(t.shape)} per sample")
        data = value[i:i + size]
        i += size
        if len(data) != size:
            raise Poisoned(f"{name!r} is truncated")
        count = int(np.prod(shape)) if shape else 1
        if t.datatype == "BYTES":
            if dtype != "BYTES":
                raise Poisoned(f"{name!r} is {dtype}, the model answers BYTES")
            out[name] = _decode_objects(data, count).reshape(shape)
            continue
        np_dtype = t.numpy_dtype.newbyteorder("<")
        if dtype != np_dtype.str or size != count * np_dtype.itemsize:
            raise Poisoned(f"{name!r} is {dtype} of {size} bytes, the model answers {np_dtype.str} x {count}")
        out[name] = np.frombuffer(data, np_dtype).astype(t.numpy_dtype).reshape(shape)
    if i != len(value):
        raise Poisoned("trailing bytes")
    return out


# ---------------------------------------------------------------- counters


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    bypasses: int = 0
    refused: int = 0
    errors: int = 0           # Redis calls that failed or timed out (a bypass, or a store that did not happen)
    stored: int = 0
    too_large: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, outcome: Outcome) -> None:
        self.add(_FIELD[outcome])

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    @property
    def requests(self) -> int:
        return self.hits + self.misses + self.bypasses + self.refused

    @property
    def hit_rate(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    def prometheus(self, model: str) -> str:
        """Prometheus text exposition of the counters (serve it, or write it where node-exporter reads)."""
        lines = ["# HELP tck_cache_requests_total Requests through the shared response cache, by outcome.",
                 "# TYPE tck_cache_requests_total counter"]
        for o in Outcome:
            lines.append(f'tck_cache_requests_total{{model="{model}",outcome="{o.value}"}} {getattr(self, _FIELD[o])}')
        for name in ("errors", "stored", "too_large"):
            lines += [f"# TYPE tck_cache_{name}_total counter", f'tck_cache_{name}_total{{model="{model}"}} {getattr(self, name)}']
        return "\n".join(lines) + "\n"


_FIELD = {Outcome.HIT: "hits", Outcome.MISS: "misses", Outcome.BYPASS: "bypasses", Outcome.REFUSED: "refused"}


# ---------------------------------------------------------------- the clients


def _digest_of(config: Mapping) -> str | None:
    p = (config.get("parameters") or {}).get(DIGEST_PARAM) or {}
    return p.get("string_value") or None


class _CacheBase:
    def __init__(self, url: str | None, policy: CachePolicy, digest: str | None):
        self.redis_url = url or url_from_env()
        if not self.redis_url:
            raise ClientError(f"no Redis URL: pass one (redis://:password@host:port/0), set {REDIS_URL_ENV} "
                              f"(`tck cache serve` prints it) or {REDIS_URL_FILE_ENV} (`tck cache serve --url-file`)")
        self.policy, self.stats = policy, CacheStats()
        self._fixed_digest, self._digest, self._digest_at = digest, digest, 0.0
        self._skip_until = 0.0
        self.last: Outcome | None = None

    def _skipping(self) -> bool:
        return time.monotonic() < self._skip_until

    def _failed(self) -> None:
        self.stats.add("errors")
        self._skip_until = time.monotonic() + self.policy.retry_after_s

    def _need_digest(self) -> bool:
        return self._fixed_digest is None and (self._digest is None or
                                                time.monotonic() - self._digest_at > self.policy.digest_refresh_s)

    def _set_digest(self, config: Mapping, model: str) -> None:
        d = _digest_of(config)
        if d is None:
            raise ClientError(f"model {model!r} publishes no {DIGEST_PARAM} in its config (not published by tck): pass "
                              "digest= (a hash of the artifact it serves) so a republished model never answers from "
                              "the old one's entries")
        self._digest, self._digest_at = d, time.monotonic()

    def _finish(self, outcome: Outcome) -> None:
        self.last = outcome
        self.stats.count(outcome)

    def _answer(self, value: bytes, meta: ModelMeta, batch: int, names: Sequence[str]) -> dict[str, np.ndarray] | None:
        """The stored answer (a hit), or None when it is not this model's answer (refused: the caller deletes it)."""
        try:
            got = decode_outputs(value, meta, batch, names, self.policy.max_value_bytes)
        except Poisoned:
            return None
        self._finish(Outcome.HIT)
        return got

    def _storable(self, result: Mapping[str, np.ndarray]) -> bytes | None:
        """The value to store, or None: too large, or Redis is being skipped after an error."""
        value = encode_outputs(result)
        if len(value) > self.policy.max_value_bytes:
            self.stats.add("too_large")
            return None
        return None if self._skipping() else value

    @property
    def _ttl_ms(self) -> int:
        return max(1, int(self.policy.ttl_s * 1000))

    def _key_for(self, model: str, version: str, inputs: Mapping[str, np.ndarray], outputs: list[str] | None) -> str:
        """The entry's key: a subset of the outputs is an entry of its own."""
        return cache_key(self.policy, model, version, self._digest, inputs) + \
            ("" if outputs is None else ":" + ",".join(sorted(outputs)))


class CachedClient(_CacheBase):
    """A ``TritonClient`` behind the shared exact cache. ``infer`` never fails because of Redis."""

    def __init__(self, client: TritonClient, redis_url: str | None = None, policy: CachePolicy = CachePolicy(),
                 digest: str | None = None):
        super().__init__(redis_url, policy, digest)
        self.client = client
        self.redis = connect(self.redis_url, policy.timeout_s)

    def _key(self, inputs: Mapping[str, np.ndarray], outputs: list[str] | None) -> str:
        if self._need_digest():
            self._set_digest(self.client.model_config(), self.client.model)
        return self._key_for(self.client.metadata().name, self.client.version, inputs, outputs)

    def infer(self, inputs: Mapping[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        import redis
        meta = self.client.metadata()
        batch = self.client.check(inputs)           # bad input fails as it would without a cache
        names = outputs or [t.name for t in meta.outputs]
        key = self._key(inputs, outputs)
        if self._skipping():
            self._finish(Outcome.BYPASS)
            return self.client.infer(inputs, outputs)
        try:
            value = self.redis.get(key)
        except (redis.RedisError, OSError):
            self._failed()
            self._finish(Outcome.BYPASS)
            return self.client.infer(inputs, outputs)
        outcome = Outcome.MISS
        if value is not None:
            got = self._answer(value, meta, batch, names)
            if got is not None:
                return got
            outcome = Outcome.REFUSED
            self._try(lambda: self.redis.delete(key))
        result = self.client.infer(inputs, outputs)
        stored = self._storable(result)
        if stored is not None and self._try(lambda: self.redis.set(key, stored, px=self._ttl_ms)):
            self.stats.add("stored")
        self._finish(outcome)
        return result

    def _try(self, fn) -> bool:
        import redis
        try:
            fn()
            return True
        except (redis.RedisError, OSError):
            self._failed()
            return False

    def close(self) -> None:
        try:
            self.redis.close()
        except Exception:  # noqa: BLE001
            pass
        self.client.close()

    def __enter__(self) -> "CachedClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncCachedClient(_CacheBase):
    """An ``AsyncTritonClient`` behind the shared exact cache (redis.asyncio)."""

    def __init__(self, client: AsyncTritonClient, redis_url: str | None = None, policy: CachePolicy = CachePolicy(),
                 digest: str | None = None):
        super().__init__(redis_url, policy, digest)
        self.client = client
        self.redis = connect_async(self.redis_url, policy.timeout_s)

    async def _redis(self, coro):
        """One Redis call within the policy's timeout; None and an error counted when it fails."""
        import asyncio

        import redis
        try:
            return True, await asyncio.wait_for(coro, self.policy.timeout_s)
        except (redis.RedisError, OSError, asyncio.TimeoutError):
            self._failed()
            return False, None

    async def infer(self, inputs: Mapping[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        meta = await self.client.metadata()
        batch = self.client.check(inputs)
        names = outputs or [t.name for t in meta.outputs]
        if self._need_digest():
            self._set_digest(await self.client.model_config(), self.client.model)
        key = self._key_for(meta.name, self.client.version, inputs, outputs)
        if self._skipping():
            self._finish(Outcome.BYPASS)
            return await self.client.infer(inputs, outputs)
        ok, value = await self._redis(self.redis.get(key))
        if not ok:
            self._finish(Outcome.BYPASS)
            return await self.client.infer(inputs, outputs)
        outcome = Outcome.MISS
        if value is not None:
            got = self._answer(value, meta, batch, names)
            if got is not None:
                return got
            outcome = Outcome.REFUSED
            await self._redis(self.redis.delete(key))
        result = await self.client.infer(inputs, outputs)
        stored = self._storable(result)
        if stored is not None and (await self._redis(self.redis.set(key, stored, px=self._ttl_ms)))[0]:
            self.stats.add("stored")
        self._finish(outcome)
        return result

    async def close(self) -> None:
        try:
            await self.redis.aclose()
        except Exception:  # noqa: BLE001
            pass
        await self.client.close()

    async def __aenter__(self) -> "AsyncCachedClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
