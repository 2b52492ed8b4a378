"""Triton Python-backend model: runs the version folder's ONNX with ONNX Runtime.

All requests of one ``execute()`` go to ONNX Runtime in one call (grouped by the shape of their
non-batch axes) and the outputs are split back per request. Dtypes and names come from the model
config, not from this file. A request that fails gets its own error; the others still answer. A request with NaN/Inf in a float
input, or whose float outputs come out NaN/Inf, is answered with an error (parameter allow_nonfinite).
An INT8 model refuses to load on a CPU whose integer kernels it was not gated for (cpu_isa.py).
Under overload it sheds (``Backlog``): Triton 2.51's own queue policy costs 3-4x at low load.
"""

import json
import os
import re
import sys
import time
import urllib.request

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


_ORT_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16", "tensor(int64)": "TYPE_INT64",
              "tensor(int32)": "TYPE_INT32", "tensor(int8)": "TYPE_INT8", "tensor(uint8)": "TYPE_UINT8",
              "tensor(bool)": "TYPE_BOOL", "tensor(double)": "TYPE_FP64", "tensor(string)": "TYPE_STRING"}


def config_mismatch(session, cfg) -> str:
    """Where the config's tensors (names, dtypes, ranks) differ from the ONNX graph's; '' if they agree."""
    for kind, declared, actual in (("input", cfg.get("input", []), session.get_inputs()),
                                   ("output", cfg.get("output", []), session.get_outputs())):
        graph = {t.name: t for t in actual}
        for t in declared:
            g = graph.get(t["name"])
            if g is None:
                return f"{kind} {t['name']!r} is not in the graph (it has {sorted(graph)})"
            want = _ORT_TYPES.get(g.type, g.type)
            if t["data_type"] != want:
                return f"{kind} {t['name']!r} is {t['data_type']} in the config, {want} in the graph"
            rank = len(t.get("dims", [])) + (1 if int(cfg.get("max_batch_size", 0)) > 0 else 0)
            if isinstance(g.shape, list) and len(g.shape) != rank:
                return f"{kind} {t['name']!r} has rank {rank} in the config, {len(g.shape)} in the graph"
    return ""


METRICS_ENV = "TCK_TRITON_METRICS"   # Triton's metrics URL, given to the server (and so to its stubs) at start
OVERLOADED = "overloaded"           # the error text clients map to Overloaded


class Backlog:
    """Bounds the requests waiting for this model while Triton 2.51's queue policy cannot (it stalls
    lone requests at low load: upstream server#8870). A batch that arrives full is the sign of a queue
    (the batcher forms its largest preferred batch only when requests wait); only then is Triton's
    pending-request gauge read (~0.5 ms), at most every ``poll_s``, inside execute: a thread cannot
    do it, the backend stub holds the GIL while it waits for requests (tried: readings went stale and
    the queue reached 4x the bound). While the reading is above ``bound``, every request of a batch is
    answered at once with an error, so the queue drains a batch of errors at a time instead of growing.
    With batches short of full nothing is read and nothing is shed: no cost at low load.

    Not for a model with a variable-length input (``ragged``): its requests of different shapes never
    share a batch, so batches never fill, and shedding one request costs about what serving it does;
    measured on ``signals`` at twice its capacity, shedding on every execute served 71 requests/s where
    not shedding served 1,921. Such a model is bounded by the queue policy (Triton >= 2.72) or a front."""

    def __init__(self, model: str, version: str, bound: int, full: int, url: str, ragged: bool = False,
                 poll_s: float = 0.02):
        self.bound, self.full, self.url, self.ragged, self.poll_s = bound, full, url, ragged, poll_s
        self.pattern = re.compile(r'^nv_inference_pending_request_count\{model="%s",version="%s"\} (\d+)'
                                  % (re.escape(model), re.escape(version)), re.M)
        self.shedding, self.last_poll, self.pending = False, 0.0, 0

    @property
    def active(self) -> bool:
        return bool(self.bound and self.url and not self.ragged)

    def shed(self, batch: int) -> bool:
        if not self.active:
            return False
        if batch < self.full:
            self.shedding = False
            return False
        now = time.monotonic()
        if now - self.last_poll >= self.poll_s:
            self.last_poll = now
            try:
                with urllib.request.urlopen(self.url, timeout=0.05) as r:     # never long inside execute
                    m = self.pattern.search(r.read().decode())
                self.pending = int(m.group(1)) if m else 0
            except (OSError, ValueError):
                self.pending = 0       # metrics unreadable: serve (a bound we cannot read is no reason to refuse)
            self.shedding = self.pending > self.bound
        return self.shedding


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        if params.get("int8_recipe"):
            sys.path.insert(0, version_dir)
            import cpu_isa

            why = cpu_isa.serving_refusal(params["int8_recipe"], params.get("int8_gated_isa", "unknown"))
            if why:
                raise RuntimeError(f"{args['model_name']}: {why}")
        path = os.path.realpath(os.path.join(version_dir, params.get("onnx_file", "model.onnx")))
        if os.path.dirname(path) != os.path.realpath(version_dir):
            raise RuntimeError(f"{args['model_name']}: parameter onnx_file {params.get('onnx_file')!r} must name a file "
                               f"in the model's version folder")
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(params.get("intra_op_threads", "1"))
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.inputs = [(i["name"], pb_utils.triton_string_to_numpy(i["data_type"])) for i in cfg["input"]]
        self.outputs = [(o["name"], pb_utils.triton_string_to_numpy(o["data_type"])) for o in cfg["output"]]
        # NaN/Inf in, or out (a finite input past what the model takes, e.g. 3e38): that request gets an
        # error instead of an answer that looks like one. Parameter allow_nonfinite = "true" turns the check off.
        self.check_finite = params.get("allow_nonfinite", "false").lower() != "true"
        # under a backlog the batcher forms its largest preferred batch (else max_batch_size): "full"
        preferred = cfg.get("dynamic_batching", {}).get("preferred_batch_size", [])
        full = max([int(b) for b in preferred] or [int(cfg.get("max_batch_size", 0)) or 1] + [2])   # 1: any load
        ragged = any(int(d) < 0 for i in cfg["input"] for d in i.get("dims", []))
        self.backlog = Backlog(args["model_name"], args["model_version"], int(params.get("backlog_max", "0")),
                               full, os.environ.get(METRICS_ENV, ""), ragged)
        why = config_mismatch(self.session, cfg)
        if why:      # refuse to load, before any warmup request reaches ONNX Runtime with the wrong tensors
            raise RuntimeError(f"{args['model_name']}: config.pbtxt does not match {os.path.basename(path)}: {why}")

    def _shed(self, responses):
        """Every request not already answered (a bad request keeps its own error) gets Overloaded."""
        return [r or pb_utils.InferenceResponse(error=pb_utils.TritonError(
            f"{OVERLOADED}: {self.backlog.pending} requests are waiting for this model (bound "
            f"{self.backlog.bound}, config parameter backlog_max); retry later or add capacity"))
            for r in responses]

    def execute(self, requests):
        responses = [None] * len(requests)
        groups = {}
        for idx, req in enumerate(requests):
            try:
                feed = {}
                for name, dtype in self.inputs:
                    t = pb_utils.get_input_tensor_by_name(req, name)
                    feed[name] = t.as_numpy().astype(dtype, copy=False)
                    if self.check_finite and feed[name].dtype.kind == "f" and not np.isfinite(feed[name]).all():
                        raise ValueError(f"input {name!r} holds NaN or Inf; this model refuses non-finite inputs "
                                         f"(config parameter allow_nonfinite)")
                key = tuple(feed[n].shape[1:] for n, _ in self.inputs)
                groups.setdefault(key, []).append((idx, feed))
            except Exception as e:  # noqa: BLE001 - one bad request must not fail the others
                responses[idx] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"bad request: {e}"))
        # the batch's samples (a request may carry several: what the batcher counts), from the inputs just
        # read, so that the bound costs nothing at low load
        if self.backlog.active and self.backlog.shed(
                sum(len(f[self.inputs[0][0]]) for members in groups.values() for _, f in members)):
            return self._shed(responses)
        for members in groups.values():
            try:
                joined = {n: np.concatenate([f[n] for _, f in members]) for n, _ in self.inputs}
                outs = self.session.run([n for n, _ in self.outputs], joined)
                sizes = np.cumsum([len(f[self.inputs[0][0]]) for _, f in members])[:-1]
                parts = [np.split(o, sizes) for o in outs]
                for k, (idx, _) in enumerate(members):
                    arrays = [parts[j][k].astype(dt, copy=False) for j, (_, dt) in enumerate(self.outputs)]
                    bad = [n for (n, _), a in zip(self.outputs, arrays)
                           if self.check_finite and a.dtype.kind == "f" and not np.isfinite(a).all()]
                    responses[idx] = pb_utils.InferenceResponse(error=pb_utils.TritonError(
                        f"bad request: output {bad[0]!r} came out NaN or Inf: the inputs lie outside what this model "
                        f"takes (config parameter allow_nonfinite)")) if bad else pb_utils.InferenceResponse(
                        output_tensors=[pb_utils.Tensor(n, a) for (n, _), a in zip(self.outputs, arrays)])
            except Exception as e:  # noqa: BLE001
                for idx, _ in members:
                    responses[idx] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"inference failed: {e}"))
        return responses
