"""Typed helpers over the tritonclient SDK: HTTP or gRPC, sync (``TritonClient``) or asyncio
(``AsyncTritonClient``). Inputs are checked against the model's metadata before anything is sent;
SDK errors come back as this package's errors with the URL, model and timeout in the message.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from clients.errors import (ClientError, InferenceFailed, InvalidInput, ModelNotFound, Overloaded, RequestTimeout,
                            ServerUnavailable)

PROTOCOLS = ("http", "grpc")
_NP = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32,
       "INT16": np.int16, "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_, "BYTES": np.object_}


@dataclass(frozen=True)
class TensorMeta:
    name: str
    datatype: str        # Triton's name: FP32, INT64, BYTES, ...
    shape: tuple[int, ...]  # per sample (batch axis removed when the model batches); -1 = any

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(_NP[self.datatype])


@dataclass(frozen=True)
class ModelMeta:
    name: str
    version: str
    max_batch_size: int
    inputs: tuple[TensorMeta, ...]
    outputs: tuple[TensorMeta, ...]


def _modules(protocol: str, aio: bool):
    if protocol == "http":
        import tritonclient.http as m
        if aio:
            import tritonclient.http.aio as a
            return m, a
        return m, m
    if protocol == "grpc":
        import tritonclient.grpc as m
        if aio:
            import tritonclient.grpc.aio as a
            return m, a
        return m, m
    raise ClientError(f"protocol {protocol!r} is unknown; use one of {PROTOCOLS}")


def default_url(protocol: str) -> str:
    return "127.0.0.1:8001" if protocol == "grpc" else "127.0.0.1:8000"


class _Base:
    def __init__(self, url: str | None, model: str, protocol: str = "http", timeout_s: float = 30.0, version: str = "",
                 allow_nonfinite: bool = False):
        self.protocol, self.model, self.version, self.timeout_s = protocol, model, version, timeout_s
        self.allow_nonfinite = allow_nonfinite
        self.url = (url or default_url(protocol)).removeprefix("http://").removeprefix("grpc://")
        self._meta: ModelMeta | None = None

    def _infer_headers(self) -> dict[str, str]:
        from clients.server import infer_headers
        return infer_headers(self.url, self.protocol)

    def _where(self) -> str:
        version = f" version {self.version!r}" if self.version else ""
        return f"{self.protocol}://{self.url} model {self.model!r}{version} (timeout {self.timeout_s:g} s)"

    def _wrap(self, e: BaseException, action: str) -> ClientError:
        """Translate an SDK or socket error; keeps timeouts and connection errors apart."""
        # tritonclient's InferenceServerException carries message() and status(); other errors only str()
        text = str((e.message() if callable(getattr(e, "message", None)) else None) or e)
        status = str((e.status() if callable(getattr(e, "status", None)) else None) or "")
        low = f"{text} {status}".lower()
        where = self._where()
        shed = "overloaded: " in low and "waiting for this model" in low          # the CPU model's backlog bound
        if "request timeout expired" in low or "exceeds maximum queue size" in low or shed:
            why = "its backlog bound" if shed else "its queue policy"
            advice = "" if "retry later" in low else "; retry later or add capacity"
            return Overloaded(f"{action}: {where} shed the request under {why} ({text}){advice}")
        if isinstance(e, (TimeoutError, socket.timeout)) or "deadline" in low or "timed out" in low or "timeout" in type(e).__name__.lower():
            return RequestTimeout(f"{action}: no answer from {where}")
        if "unknown model" in low or "not found" in low or "unavailable model" in low or "is not ready" in low \
                or "notfound" in low or "request for unknown model" in low:
            return ModelNotFound(f"{action}: {where} is not served: {text}")
        if "expecting header" in low and "infer-key" in low:
            from clients.server import INFER_KEY_ENV, infer_key_for
            key = "a wrong" if infer_key_for(self.url) else "no"
            return InferenceFailed(f"{action}: {where} refused: {text}; HTTP inference needs the server's infer key and "
                                   f"{key} key was sent (set {INFER_KEY_ENV}: `make serve` prints it), or call it "
                                   "over gRPC (its port, protocol grpc), which needs none")
        if "restricted" in low or "expecting header" in low:     # Triton answers gRPC's refusal as UNAVAILABLE
            from clients.server import admin_key_for
            key = "a wrong" if admin_key_for(self.url) else "no"
            return InferenceFailed(f"{action}: {where} refused: {text}; this API needs the server's admin key and "
                                   f"{key} key was sent (set TRITON_ADMIN_KEY, or `make serve` prints it)")
        if isinstance(e, ConnectionError) or "connection refused" in low or "failed to connect" in low \
                or "unavailable" in low or "connect call failed" in low or "cannot connect" in low or isinstance(e, OSError):
            return ServerUnavailable(f"{action}: cannot reach {where}: {text}. Is the server running (`make serve`)?")
        if "unexpected shape" in low or "datatype" in low or "unexpected inference input" in low or "batch-size" in low:
            return InvalidInput(f"{action}: server refused the inputs for {where}: {text}")
        return InferenceFailed(f"{action}: {where} failed: {text}")

    def _parse_meta(self, md: Mapping[str, Any], cfg: Mapping[str, Any]) -> ModelMeta:
        mbs = int(cfg.get("max_batch_size", 0))
        def tensors(items):
            out = []
            for t in items:
                shape = tuple(int(d) for d in t["shape"])
                out.append(TensorMeta(t["name"], t["datatype"], shape[1:] if mbs > 0 else shape))
            return tuple(out)
        return ModelMeta(md["name"], str(md.get("versions", [""])[-1] if md.get("versions") else ""), mbs,
                         tensors(md["inputs"]), tensors(md["outputs"]))

    def check(self, inputs: Mapping[str, np.ndarray]) -> int:
        """Validate names, dtypes and shapes against the metadata; returns the batch size."""
        meta = self._meta
        names = {t.name for t in meta.inputs}
        if set(inputs) != names:
            raise InvalidInput(f"{self._where()}: inputs {sorted(inputs)} given, the model takes {sorted(names)}")
        batch = None
        for t in meta.inputs:
            a = inputs[t.name]
            if not isinstance(a, np.ndarray):
                raise InvalidInput(f"{self._where()}: input {t.name!r} must be a numpy array, got {type(a).__name__}")
            want = t.numpy_dtype
            ok = a.dtype == want or (want == np.object_ and a.dtype.kind in "OSU")
            if not ok:
                raise InvalidInput(f"{self._where()}: input {t.name!r} has dtype {a.dtype}, the model wants {want} ({t.datatype})")
            if a.dtype.kind == "f" and not self.allow_nonfinite and not np.isfinite(a).all():
                bad = np.argwhere(~np.isfinite(a))[0].tolist()
                raise InvalidInput(f"{self._where()}: input {t.name!r} holds NaN or Inf (first at index {bad}); a model "
                                   "answers such inputs with garbage. Pass allow_nonfinite=True to send them anyway")
            per = a.shape[1:] if meta.max_batch_size > 0 else a.shape
            if len(per) != len(t.shape) or any(d != -1 and d != s for d, s in zip(t.shape, per)):
                raise InvalidInput(f"{self._where()}: input {t.name!r} has shape {a.shape}, the model wants "
                                   f"{('[batch, ' if meta.max_batch_size else '[') + ', '.join(map(str, t.shape))}]")
            if meta.max_batch_size > 0:
                if batch is not None and a.shape[0] != batch:
                    raise InvalidInput(f"{self._where()}: inputs disagree on the batch size ({batch} vs {a.shape[0]})")
                batch = a.shape[0]
        if meta.max_batch_size > 0 and not 1 <= batch <= meta.max_batch_size:
            raise InvalidInput(f"{self._where()}: batch {batch} is outside 1..max_batch_size ({meta.max_batch_size}); "
                               "split the request")
        return batch or 1

    def _build(self, mod, inputs: Mapping[str, np.ndarray], outputs: list[str] | None):
        infer_inputs = []
        for t in self._meta.inputs:
            a = inputs[t.name]
            i = mod.InferInput(t.name, list(a.shape), t.datatype)
            if self.protocol == "http":
                i.set_data_from_numpy(a, binary_data=True)
            else:
                i.set_data_from_numpy(a)
            infer_inputs.append(i)
        names = outputs or [t.name for t in self._meta.outputs]
        if self.protocol == "http":
            outs = [mod.InferRequestedOutput(n, binary_data=True) for n in names]
        else:
            outs = [mod.InferRequestedOutput(n) for n in names]
        return infer_inputs, outs, names


class TritonClient(_Base):
    """Synchronous client for one model. Inputs with NaN/Inf are refused unless ``allow_nonfinite``."""

    def __init__(self, url: str | None, model: str, protocol: str = "http", timeout_s: float = 30.0, version: str = "",
                 allow_nonfinite: bool = False):
        super().__init__(url, model, protocol, timeout_s, version, allow_nonfinite)
        self._mod, _ = _modules(protocol, aio=False)
        try:
            if protocol == "http":
                self._c = self._mod.InferenceServerClient(self.url, connection_timeout=timeout_s, network_timeout=timeout_s)
            else:
                self._c = self._mod.InferenceServerClient(self.url)
        except Exception as e:  # noqa: BLE001 - the SDK raises several types here
            raise self._wrap(e, "connect") from e

    def _call(self, action: str, fn, *args, **kw):
        try:
            if self.protocol == "grpc":
                kw.setdefault("client_timeout", self.timeout_s)
            return fn(*args, **kw)
        except ClientError:
            raise
        except Exception as e:  # noqa: BLE001
            raise self._wrap(e, action) from e

    def server_ready(self) -> bool:
        try:
            return bool(self._call("health", self._c.is_server_ready))
        except ServerUnavailable:
            return False

    def server_metadata(self) -> dict[str, Any]:
        md = self._call("server metadata", self._c.get_server_metadata, **({"as_json": True} if self.protocol == "grpc" else {}))
        return dict(md)

    def metadata(self) -> ModelMeta:
        if self._meta is None:
            kw = {"as_json": True} if self.protocol == "grpc" else {}
            ready = self._call("model ready", self._c.is_model_ready, self.model, self.version)
            if not ready:
                raise ModelNotFound(f"{self._where()} is not loaded or not ready on the server")
            md = self._call("metadata", self._c.get_model_metadata, self.model, self.version, **kw)
            cfg = self._call("config", self._c.get_model_config, self.model, self.version, **kw)
            cfg = cfg.get("config", cfg)
            self._meta = self._parse_meta(md, cfg)
        return self._meta

    def model_config(self) -> dict[str, Any]:
        kw = {"as_json": True} if self.protocol == "grpc" else {}
        cfg = self._call("config", self._c.get_model_config, self.model, self.version, **kw)
        return cfg.get("config", cfg)

    def infer(self, inputs: Mapping[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        self.metadata()
        self.check(inputs)
        ins, outs, names = self._build(self._mod, inputs, outputs)
        res = self._call("infer", self._c.infer, self.model, ins, model_version=self.version, outputs=outs,
                         headers=self._infer_headers())
        return {n: res.as_numpy(n) for n in names}

    def statistics(self) -> dict[str, Any]:
        kw = {"as_json": True} if self.protocol == "grpc" else {}
        return self._call("statistics", self._c.get_inference_statistics, self.model, **kw)

    def load_model(self, config_json: str | None = None) -> None:
        """Explicit model control: (re)load, optionally with a config override (JSON). File overrides
        (``file:1/model.py`` and the like) are never sent: a load that carries files runs their code.
        Sends the server's admin key (``clients.server.admin_key_for``): the repository API is restricted."""
        from clients.server import admin_headers
        kw = {"config": config_json} if config_json else {}
        self._meta = None
        self._call("load", self._c.load_model, self.model, headers=admin_headers(self.url, self.protocol), **kw)

    def unload_model(self) -> None:
        from clients.server import admin_headers
        self._meta = None
        self._call("unload", self._c.unload_model, self.model, headers=admin_headers(self.url, self.protocol))

    def close(self) -> None:
        try:
            self._c.close()
        except Exception:  # noqa: BLE001 - closing a dead connection is not an error
            pass

    def __enter__(self) -> "TritonClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncTritonClient(_Base):
    """asyncio client for one model (tritonclient.http.aio or tritonclient.grpc.aio)."""

    def __init__(self, url: str | None, model: str, protocol: str = "grpc", timeout_s: float = 30.0, version: str = "",
                 allow_nonfinite: bool = False):
        super().__init__(url, model, protocol, timeout_s, version, allow_nonfinite)
        self._mod, self._aio = _modules(protocol, aio=True)
        self._c = self._aio.InferenceServerClient(self.url) if protocol == "grpc" else \
            self._aio.InferenceServerClient(self.url, conn_timeout=timeout_s)

    async def _call(self, action: str, coro):
        import asyncio
        try:
            return await asyncio.wait_for(coro, self.timeout_s)
        except ClientError:
            raise
        except asyncio.TimeoutError as e:
            raise RequestTimeout(f"{action}: no answer from {self._where()}") from e
        except Exception as e:  # noqa: BLE001
            raise self._wrap(e, action) from e

    async def metadata(self) -> ModelMeta:
        if self._meta is None:
            kw = {"as_json": True} if self.protocol == "grpc" else {}
            if not await self._call("model ready", self._c.is_model_ready(self.model, self.version)):
                raise ModelNotFound(f"{self._where()} is not loaded or not ready on the server")
            md = await self._call("metadata", self._c.get_model_metadata(self.model, self.version, **kw))
            cfg = await self._call("config", self._c.get_model_config(self.model, self.version, **kw))
            self._meta = self._parse_meta(md, cfg.get("config", cfg))
        return self._meta

    async def model_config(self) -> dict[str, Any]:
        kw = {"as_json": True} if self.protocol == "grpc" else {}
        cfg = await self._call("config", self._c.get_model_config(self.model, self.version, **kw))
        return cfg.get("config", cfg)

    async def infer(self, inputs: Mapping[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """One request, metadata look-up included, within ``timeout_s`` in all (not per call)."""
        import asyncio

        async def go() -> dict[str, np.ndarray]:
            await self.metadata()
            self.check(inputs)
            ins, outs, names = self._build(self._mod, inputs, outputs)
            res = await self._call("infer", self._c.infer(self.model, ins, model_version=self.version, outputs=outs,
                                                          headers=self._infer_headers()))
            return {n: res.as_numpy(n) for n in names}
        try:
            return await asyncio.wait_for(go(), self.timeout_s)
        except asyncio.TimeoutError as e:
            raise RequestTimeout(f"infer: no answer from {self._where()}") from e

    async def prepare(self, inputs: Mapping[str, np.ndarray], outputs: list[str] | None = None):
        """Check and serialize once; ``infer_prepared`` can then send the same request many times cheaply."""
        await self.metadata()
        self.check(inputs)
        return self._build(self._mod, inputs, outputs)

    async def infer_prepared(self, prepared) -> dict[str, np.ndarray]:
        ins, outs, names = prepared
        res = await self._call("infer", self._c.infer(self.model, ins, model_version=self.version, outputs=outs,
                                                      headers=self._infer_headers()))
        return {n: res.as_numpy(n) for n in names}

    async def close(self) -> None:
        await self._c.close()

    async def __aenter__(self) -> "AsyncTritonClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
