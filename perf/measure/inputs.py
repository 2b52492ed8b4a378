"""Real inputs for every load test: perf_analyzer's --input-data file and our generator's samples,
drawn from the spec's own held-out evaluation data, never zeros or random data unless asked for.

For a model with dynamic axes (variable-length signals, token sequences) the requests mix the
lengths the evaluation data has, in the proportions it has them: one request per held-out sample,
round-robin across the data's batches, so every length is represented from the first requests on.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from build_engines.spec import ModelSpec
from perf.errors import BadSettings

MAX_REQUESTS = 512


def request_samples(spec: ModelSpec, limit: int = MAX_REQUESTS) -> list[dict[str, np.ndarray]]:
    """Single-sample requests (batch 1) from the evaluation data, interleaved across its batches."""
    queues = []
    for feed, _ in spec.evaluation_batches():
        n = len(next(iter(feed.values())))
        queues.append([{k: v[i:i + 1] for k, v in feed.items()} for i in range(n)])
    out: list[dict[str, np.ndarray]] = []
    while len(out) < limit and any(queues):
        for q in queues:
            if q and len(out) < limit:
                out.append(q.pop(0))
    return out


def _content(v: np.ndarray) -> list:
    flat = v[0].ravel()
    if flat.dtype == object or flat.dtype.kind in "SU":
        return [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in flat]
    if flat.dtype.kind == "f" and not np.all(np.isfinite(flat)):
        raise BadSettings("the evaluation data holds NaN or Inf: perf_analyzer's JSON cannot carry it; clean the data")
    return flat.tolist()


def write_input_data(path: Path, samples: list[dict[str, np.ndarray]]) -> Path:
    """A perf_analyzer --input-data file that sends these samples in order (batch 1, each with its shape)."""
    if not samples:
        raise BadSettings(f"no samples to write to {path}: the evaluation data is empty")
    data = [{k: {"content": _content(v), "shape": list(v.shape[1:])} for k, v in s.items()} for s in samples]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"data": data}))
    tmp.replace(path)
    return path


def input_data_for(spec: ModelSpec, work_dir: Path, limit: int = MAX_REQUESTS) -> Path:
    """The spec's real-input file for perf_analyzer (rewritten only when the data changed)."""
    samples = request_samples(spec, limit)
    body = json.dumps([{k: _content(v) for k, v in s.items()} for s in samples]).encode()
    path = Path(work_dir) / f"inputs-{spec.name}-{hashlib.sha256(body).hexdigest()[:12]}.json"
    return path if path.exists() else write_input_data(path, samples)
