"""Typed measurement records under results/: one JSON file per measurement, with the environment.

Every report reads these records and nothing else. A file is written atomically, only after its
measurement succeeded, so a failed sweep leaves no file that looks valid. Reading one that cannot be
used (unreadable, another schema, a bad field) is an error naming the file, never a skip.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
from pathlib import Path
from typing import ClassVar, Iterable, TypeVar

from build_engines.records import Record, now
from build_engines.runtime import environment
from build_engines.spec import ServingConfig
from perf.measure.analyzer import PerfPoint

ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = Path(os.environ.get("RESULTS_DIR", ROOT / "results"))
R = TypeVar("R", bound=Record)


def _stamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def save(record: R, results_dir: Path | None = None, name: str = "") -> Path:
    """Write ``record`` as results/<kind>-<name>-<time>.json, with this machine's environment."""
    d = Path(results_dir or RESULTS_DIR)
    if not record.environment:
        record.environment = environment()
    label = re.sub(r"[^A-Za-z0-9_.-]+", "-", name or getattr(record, "model", "") or "run").strip("-")
    return record.write(d / f"{record.KIND}-{label}-{_stamp()}.json")


def load_all(cls: type[R], results_dir: Path | None = None, **match) -> list[R]:
    """Every record of this kind in the folder whose fields equal ``match``; any file of the kind that
    cannot be read is an error (the report would otherwise be built on part of the run)."""
    d = Path(results_dir or RESULTS_DIR)
    out = []
    for p in sorted(d.glob(f"{cls.KIND}-*.json")):
        rec = cls.read(p)
        if all(getattr(rec, k) == v for k, v in match.items()):
            out.append(rec)
    return out


def latest(records: Iterable[R]) -> R | None:
    recs = list(records)
    return max(recs, key=lambda r: (r.created, str(r.path))) if recs else None


@dataclasses.dataclass(kw_only=True)
class RunRecord(Record):
    """The sweeps a `make perf` run will write: reports refuse the run until it is complete."""

    KIND: ClassVar[str] = "run"
    WRITER: ClassVar[str] = "make perf"
    model: str
    run_id: str
    expected: list[str]
    complete: bool = False
    finished: str | None = None


@dataclasses.dataclass(kw_only=True)
class SweepRecord(Record):
    """One perf_analyzer sweep of one served config: the config, the server, the client, the points."""

    KIND: ClassVar[str] = "sweep"
    SCHEMA: ClassVar[int] = 2
    WRITER: ClassVar[str] = "make perf"
    model: str
    variant: str
    label: str
    run_id: str
    mode: str
    serving: ServingConfig | None      # None: a served model whose config has no batch dimension
    config: dict                       # the model config measured, as Triton's JSON
    server: dict
    client: dict
    points: list[PerfPoint]
    seq_tokens: int | None = None      # text models: the tokens per request of this sweep


@dataclasses.dataclass
class Interval:
    """The median of paired replicate ratios and its 95 % bootstrap interval."""

    median: float
    low: float
    high: float
    replicates: int

    @property
    def crosses_one(self) -> bool:
        return self.low < 1.0 < self.high

    def text(self) -> str:
        return (f"{self.median:.2f}x [{self.low:.2f}, {self.high:.2f}]"
                + (" (interval crosses 1.0: no clear difference)" if self.crosses_one else ""))


@dataclasses.dataclass
class AgreementRow:
    """One Poisson rate, measured by both tools in turn for several rounds."""

    rate: float
    ours: list[dict]                  # loadgen.Summary.as_dict() per round
    perf_analyzer: list[PerfPoint]    # per round
    throughput_ratio: Interval
    p50_ratio: Interval
    p99_ratio: Interval
    server_ms: float                  # the server's queue + compute per request (median over rounds)


@dataclasses.dataclass(kw_only=True)
class AgreementRecord(Record):
    """Our generator vs perf_analyzer on the same model at the same Poisson rates."""

    KIND: ClassVar[str] = "agreement"
    SCHEMA: ClassVar[int] = 2
    WRITER: ClassVar[str] = "make perf"
    model: str
    run_id: str
    rows: list[AgreementRow]
    duration_s: float


@dataclasses.dataclass(kw_only=True)
class LoadgenRecord(Record):
    KIND: ClassVar[str] = "loadgen"
    WRITER: ClassVar[str] = "tck generate"
    model: str
    url: str
    arrivals: str
    rate: float | None
    summary: dict
    records_columns: list[str]
    records: list[list[float]]


@dataclasses.dataclass(kw_only=True)
class SemanticCacheRecord(Record):
    KIND: ClassVar[str] = "semantic-cache"
    WRITER: ClassVar[str] = "make perf MODEL=minilm"
    model: str
    run_id: str
    rows: list[dict]
    queries_file: str


@dataclasses.dataclass(kw_only=True)
class BenchRecord(Record):
    """`make bench`: in-process ONNX Runtime INT8/FP32 by model and batch, interleaved replicates."""

    KIND: ClassVar[str] = "bench-ort-int8"
    WRITER: ClassVar[str] = "make bench"
    model: str
    models: list[dict]
    method: str
    command: str


def start_run(model: str, run_id: str, expected: list[str], results_dir: Path | None = None) -> Path:
    """A run manifest: the sweeps a run will write. Reports refuse a run until ``finish_run``."""
    return save(RunRecord(model=model, run_id=run_id, expected=expected), results_dir, name=f"{model}-{run_id}")


def finish_run(path: Path) -> None:
    rec = RunRecord.read(path)
    rec.complete, rec.finished = True, now()
    rec.write(path)


def run_status(model: str, run_id: str, results_dir: Path | None = None) -> RunRecord | None:
    return latest(load_all(RunRecord, results_dir, model=model, run_id=run_id))


@dataclasses.dataclass(kw_only=True)
class ReplicatesRecord(Record):
    """Configs measured in turn (A B C D A B C D ...) at one load, so drift hits each alike; each ratio is
    taken within a round and summarized by its median and interval."""

    KIND: ClassVar[str] = "replicates"
    WRITER: ClassVar[str] = "make perf"
    model: str
    run_id: str
    mode: str
    load: float
    window_ms: int
    inputs: str
    throughput: dict[str, list[float]]        # config label -> infer/s in each round
    ratios: dict[str, Interval]               # e.g. "dynamic batching gain, fp32" -> interval
