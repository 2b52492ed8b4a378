"""perf errors.

    PerfError                  root
    ├── TargetUnavailable      the server or the model is not there (checked before any load is sent)
    ├── PerfAnalyzerError      perf_analyzer failed (exit code and its last lines in the message)
    │   └── UnstableMeasurement  still unstable after widening the window and retrying
    ├── SlaUnmet               no candidate meets the latency SLA
    └── CostError              bad prices, traffic or catalog entries
"""


class PerfError(Exception):
    pass


class TargetUnavailable(PerfError):
    pass


class PerfAnalyzerError(PerfError):
    pass


class UnstableMeasurement(PerfAnalyzerError):
    pass


class SlaUnmet(PerfError):
    pass


class CostError(PerfError):
    pass
