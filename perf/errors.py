"""perf errors.

    PerfError                  root
    ├── TargetUnavailable      the server or the model is not there (checked before any load is sent)
    ├── PerfAnalyzerError      perf_analyzer failed (exit code and its last lines in the message)
    │   └── UnstableMeasurement  still unstable after widening the window and retrying
    ├── BadSettings            a setting or argument out of range (an SLA of 0 ms, an unknown percentile)
    ├── SlaUnmet               no candidate meets the latency SLA
    ├── NoResults              the results a command needs are not there (names the command that writes them)
    ├── CostError              bad prices, traffic or catalog entries
    └── DeployError            manifests that do not validate, or bad deployment options
"""


from build_engines.errors import UserError


class PerfError(UserError):
    pass


class TargetUnavailable(PerfError):
    pass


class PerfAnalyzerError(PerfError):
    pass


class UnstableMeasurement(PerfAnalyzerError):
    pass


class Shed(PerfAnalyzerError):
    """The server's queue policy rejected requests at this load: what it served here is not what was asked."""


class SlaUnmet(PerfError):
    pass


class CostError(PerfError):
    pass


class BadSettings(PerfError):
    pass


class NoResults(PerfError):
    pass


class DeployError(PerfError):
    pass
