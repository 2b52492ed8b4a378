"""Throughput/latency plots of sweeps (matplotlib, headless), shared by the perf and text reports."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


from perf.measure.results import SweepRecord  # noqa: E402


def plot_sweeps(sweeps: list[SweepRecord], out: Path, title: str) -> tuple[Path, Path]:
    """Throughput vs p99 per config, and latency percentiles vs load per config."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in sweeps:
        pts = s.points
        ax.plot([p.p99_us / 1e3 for p in pts], [p.throughput_infer_per_s for p in pts], marker="o", label=s.label)
        for p in pts:
            ax.annotate(f"{p.load:g}", (p.p99_us / 1e3, p.throughput_infer_per_s), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("throughput (inferences/s)")
    ax.set_title(f"{title}: throughput vs p99 (labels: {sweeps[0].mode})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    tput = out.with_name(out.stem + "-throughput.png")
    fig.tight_layout()
    fig.savefig(tput, dpi=110)
    plt.close(fig)

    n = len(sweeps)
    fig, axes = plt.subplots(1, n, figsize=(3.3 * n, 3.4), sharey=True, squeeze=False)
    for ax, s in zip(axes[0], sweeps):
        loads = [p.load for p in s.points]
        for q in ("p50", "p90", "p95", "p99"):
            ax.plot(loads, [getattr(p, f"{q}_us") / 1e3 for p in s.points], marker=".", label=q)
        ax.set_xscale("log", base=2)
        ax.set_title(s.label, fontsize=9)
        ax.set_xlabel(s.mode)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("latency (ms)")
    axes[0][0].legend(fontsize=7)
    lat = out.with_name(out.stem + "-latency.png")
    fig.tight_layout()
    fig.savefig(lat, dpi=110)
    plt.close(fig)
    return tput, lat
