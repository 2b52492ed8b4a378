"""Self-describing results files under results/: one JSON per measurement, with the environment.

Every report reads these files and nothing else. A file is written atomically, only after its
measurement succeeded, so a failed sweep leaves no file that looks valid.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

from build_engines.runtime import environment

ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = Path(os.environ.get("RESULTS_DIR", ROOT / "results"))
SCHEMA = 1


def _stamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def write_result(kind: str, payload: dict[str, Any], results_dir: Path | None = None, name: str = "") -> Path:
    d = Path(results_dir or RESULTS_DIR)
    d.mkdir(parents=True, exist_ok=True)
    label = re.sub(r"[^A-Za-z0-9_.-]+", "-", name or payload.get("model", "") or "run").strip("-")
    doc = {"schema": SCHEMA, "kind": kind, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "environment": environment(), **payload}
    path = d / f"{kind}-{label}-{_stamp()}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=_default))
    tmp.replace(path)
    return path


def _default(o: Any) -> Any:
    if hasattr(o, "__dataclass_fields__"):
        from dataclasses import asdict
        return asdict(o)
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"cannot serialize {type(o).__name__}")


def read_result(path: Path) -> dict[str, Any]:
    """One results file; a missing, unreadable or foreign file is an error naming it, never skipped."""
    from perf.errors import NoResults
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise NoResults(f"{path}: cannot read this results file ({type(e).__name__}: {e})") from e
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or "kind" not in doc:
        raise NoResults(f"{path} is not a results file of this project (schema "
                        f"{doc.get('schema') if isinstance(doc, dict) else None!r}); move it out of {Path(path).parent}")
    doc["_path"] = str(path)
    return doc


def load_results(results_dir: Path | None = None, kind: str | None = None, model: str | None = None) -> list[dict]:
    d = Path(results_dir or RESULTS_DIR)
    out = []
    for p in sorted(d.glob("*.json")):
        doc = read_result(p)
        if (kind is None or doc["kind"] == kind) and (model is None or doc.get("model") == model):
            out.append(doc)
    return out


def latest(docs: Iterable[dict], **match: Any) -> dict | None:
    """The newest results document whose top-level fields equal ``match``."""
    hits = [d for d in docs if all(d.get(k) == v for k, v in match.items())]
    return max(hits, key=lambda d: d["created"] + d["_path"]) if hits else None


def start_run(model: str, run_id: str, expected: list[str], results_dir: Path | None = None) -> Path:
    """A run manifest: the sweeps a run will write. Reports refuse a run until ``finish_run``."""
    return write_result("run", {"model": model, "run_id": run_id, "expected": expected, "complete": False},
                        results_dir, name=f"{model}-{run_id}")


def finish_run(path: Path) -> None:
    doc = json.loads(Path(path).read_text())
    doc["complete"] = True
    doc["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(path)


def run_status(model: str, run_id: str, results_dir: Path | None = None) -> dict | None:
    return latest(load_results(results_dir, "run"), model=model, run_id=run_id)
