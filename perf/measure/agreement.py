"""Our generator vs perf_analyzer on the same model and the same Poisson load: the agreement benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from perf.measure import analyzer
from perf.measure import loadgen
from perf.measure.results import AgreementRecord, AgreementRow, save


def agreement(srv, model: str, repository: Path, serving, run_id: str, rates: Sequence[float],
              settings: analyzer.PerfSettings, duration_s: float = 6.0, progress=print) -> Path:
    from dataclasses import replace

    from build_engines.examples.digits import evaluation_set
    from perf.measure.sweeps import load_candidate

    load_candidate(srv.http_url, repository, model, serving)
    x = evaluation_set()[0]["image"]
    samples = [{"image": x[i:i + 1]} for i in range(64)]
    rows = []
    for rate in rates:
        ours, _ = loadgen.run_open_loop(srv.grpc_url, model, samples, loadgen.poisson_arrivals(rate, duration_s), protocol="grpc")
        pa = analyzer.measure(srv.grpc_url, model, "request_rate", rate, replace(settings, distribution="poisson"))
        row = AgreementRow(rate, ours.as_dict(), pa, ours.throughput_per_s / pa.throughput_infer_per_s,
                           ours.p50_ms / (pa.p50_us / 1e3), ours.p99_ms / (pa.p99_us / 1e3))
        rows.append(row)
        progress(f"  agreement at {rate:g} req/s: throughput ratio {row.throughput_ratio:.3f}, p50 ratio {row.p50_ratio:.2f}")
    return save(AgreementRecord(model=model, run_id=run_id, rows=rows, duration_s=duration_s), name=model)
