"""perf_analyzer-driven measurement, our open-loop generator, tuning under an SLA, and cost per request."""

from perf.measure.analyzer import PerfPoint, PerfSettings, parse_csv, sweep
from perf.errors import CostError, PerfAnalyzerError, PerfError, SlaUnmet, TargetUnavailable, UnstableMeasurement

__all__ = ["CostError", "PerfAnalyzerError", "PerfError", "PerfPoint", "PerfSettings", "SlaUnmet", "TargetUnavailable",
           "UnstableMeasurement", "parse_csv", "sweep"]
