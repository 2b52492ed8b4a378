"""Measure served configs: load a candidate config through Triton's repository API (explicit model
control, no restart), sweep it with perf_analyzer, and write one results file per sweep."""

from __future__ import annotations

import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from google.protobuf import json_format

from build_engines.repository import ServingConfig, apply_serving, config_text, read_config
from perf.measure import analyzer
from perf.errors import TargetUnavailable
from perf.measure.results import SweepRecord, save


def new_run_id() -> str:
    return uuid.uuid4().hex[:10]


def candidate_config(repository: Path, model: str, serving: ServingConfig):
    """The published config of ``model`` with the tunable fields replaced by ``serving``."""
    cfg = read_config(Path(repository) / model)
    return apply_serving(cfg, serving)


def load_model(url: str, model: str, cfg=None, what: str = "", protocol: str = "http") -> None:
    """(Re)load ``model`` via the repository API, with ``cfg`` (a ModelConfig) as its config override or
    as published; ready (its metadata answers) when this returns. ``what``: the load, in the error."""
    from clients import ClientError, TritonClient
    try:
        with TritonClient(url, model, protocol, timeout_s=120) as c:
            c.load_model(json_format.MessageToJson(cfg) if cfg is not None else None)
            c.metadata()
    except ClientError as e:
        raise TargetUnavailable(f"loading {model}{what} failed: {e}") from e


def load_candidate(url: str, repository: Path, model: str, serving: ServingConfig, protocol: str = "http"):
    """(Re)load ``model`` with the candidate config via the repository API; returns the config loaded."""
    cfg = candidate_config(repository, model, serving)
    load_model(url, model, cfg, " with the candidate config", protocol)
    return cfg


def server_info(url: str, protocol: str = "http") -> dict:
    from clients import TritonClient
    with TritonClient(url, "", protocol, timeout_s=10) as c:
        md = c.server_metadata()
    return {"name": md.get("name"), "version": md.get("version"), "url": url}


def _client(settings: analyzer.PerfSettings, url: str) -> dict:
    return {**asdict(settings), "tool": "perf_analyzer", "url": url}


def sweep_config(http_url: str, grpc_url: str, repository: Path, model: str, serving: ServingConfig, loads: Sequence[float],
                 settings: analyzer.PerfSettings, mode: str = "concurrency", run_id: str = "", label: str = "",
                 results_dir: Path | None = None, variant: str = "", progress=None, reload: bool = True) -> tuple[Path, list]:
    """Load the candidate, sweep it, write one results file (only if the whole sweep succeeded)."""
    cfg = load_candidate(http_url, repository, model, serving) if reload else read_config(Path(repository) / model)
    url = grpc_url if settings.protocol == "grpc" else http_url
    points = analyzer.sweep(url, model, mode, loads, settings, progress=progress)
    rec = SweepRecord(model=model, variant=variant, label=label or model, run_id=run_id, mode=mode, serving=serving,
                      config=json_format.MessageToDict(cfg, preserving_proto_field_name=True), server=server_info(http_url), client=_client(settings, url),
                      points=list(points))
    return save(rec, results_dir, name=f"{model}-{label}"), points


def sweep_as_served(url: str, model: str, mode: str, loads: Sequence[float], settings: analyzer.PerfSettings,
                    run_id: str = "", label: str = "", variant: str = "", results_dir: Path | None = None,
                    progress=None) -> tuple[Path, list]:
    """Sweep a model with the config it is served with (no reload): remote servers, GPU nodes."""
    cfg = analyzer.check_target(url, model, settings.protocol)
    points = analyzer.sweep(url, model, mode, loads, settings, progress=progress, checked=True)
    rec = SweepRecord(model=model, variant=variant, label=label or f"{model} (as served)", run_id=run_id, mode=mode,
                      serving=served_serving(cfg), config=cfg, server=server_info(url, settings.protocol),
                      client=_client(settings, url), points=list(points))
    return save(rec, results_dir, name=f"{model}-{label or 'served'}"), points


def served_serving(cfg: dict) -> ServingConfig | None:
    """The serving fields of a config a server reports (None where it has no batch dimension)."""
    from build_engines.errors import SpecError
    from build_engines.repository import serving_from_config
    from tritonclient.grpc import model_config_pb2 as mc
    try:
        return serving_from_config(json_format.ParseDict(cfg, mc.ModelConfig(), ignore_unknown_fields=True))
    except (SpecError, json_format.ParseError, ValueError):
        return None
