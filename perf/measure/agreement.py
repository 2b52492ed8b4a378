"""Our generator vs perf_analyzer on the same model and the same Poisson load: the agreement benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from perf.measure import analyzer
from perf.measure import loadgen
import numpy as np

from perf.measure.replicates import interval
from perf.measure.results import AgreementRecord, AgreementRow, save


def agreement(srv, spec, model: str, repository: Path, serving, run_id: str, rates: Sequence[float],
              settings: analyzer.PerfSettings, duration_s: float = 4.0, rounds: int = 3, progress=print) -> Path:
    """Both tools send the same held-out samples (settings.input_data holds them for perf_analyzer), in
    turn for ``rounds`` rounds; each ratio is the median of the rounds' ratios with its interval. The
    server's own time per request (queue + compute, from perf_analyzer) is kept next to both clients'
    latencies: the client-side difference is the client's overhead, not the server's."""
    from dataclasses import replace

    from perf.measure.inputs import request_samples
    from perf.measure.sweeps import load_candidate

    load_candidate(srv.http_url, repository, model, serving)
    samples = request_samples(spec)
    ours: dict[float, list] = {r: [] for r in rates}
    pas: dict[float, list] = {r: [] for r in rates}
    for _ in range(rounds):                  # ours, PA, ours, PA ...: drift hits both alike
        for rate in rates:
            o, _ = loadgen.run_open_loop(srv.grpc_url, model, samples, loadgen.poisson_arrivals(rate, duration_s),
                                         protocol="grpc")
            ours[rate].append(o)
            pas[rate].append(analyzer.measure(srv.grpc_url, model, "request_rate", rate,
                                              replace(settings, distribution="poisson")))
    rows = []
    for rate in rates:
        o, p = ours[rate], pas[rate]
        row = AgreementRow(
            rate, [x.as_dict() for x in o], p,
            interval([a.throughput_per_s / b.throughput_infer_per_s for a, b in zip(o, p)]),
            interval([a.p50_ms / (b.p50_us / 1e3) for a, b in zip(o, p)]),
            interval([a.p99_ms / (b.p99_us / 1e3) for a, b in zip(o, p)]),
            float(np.median([((b.server_queue_us or 0) + (b.server_compute_infer_us or 0)) / 1e3 for b in p])))
        rows.append(row)
        progress(f"  agreement at {rate:g} req/s: throughput ratio {row.throughput_ratio.text()}, "
                 f"p50 ratio {row.p50_ratio.text()}, server-side {row.server_ms:.2f} ms")
    return save(AgreementRecord(model=model, run_id=run_id, rows=rows, duration_s=duration_s), name=model)
