"""The project's error root, and the errors of the build pipeline.

    TckError                   root of every error the project raises on purpose
    ├── UserError              wrong input, spec, flag or environment: `tck` prints one line, exits 2
    │   ├── BuildError         (here) ClientError, ServerError (clients), PerfError (perf)
    │   ...
    └── InternalError          a broken invariant, i.e. a bug: one line, exit 3
    Interrupted (a KeyboardInterrupt): Ctrl-C or SIGTERM, with the step it stopped: one line, exit 128 + signal

    BuildError                 root of the build's failures
    ├── SpecError              the model spec file is wrong (names the field)
    ├── ExportMismatch         ONNX Runtime disagrees with PyTorch beyond tolerance
    ├── CalibrationError       calibration data missing or unusable
    ├── GateRefused            a variant missed the gate (accuracy, fidelity, kernels, batch invariance)
    ├── RepositoryError        a model folder or config is invalid; nothing was published
    └── ToolMissing            an optional tool (TensorRT, a GPU) is not on this machine
"""


class TckError(Exception):
    """Root of every error the project raises on purpose."""


class UserError(TckError):
    """Something the user can fix; the message says what and where."""


class InternalError(TckError):
    """A broken invariant: a bug in this project."""


class BuildError(UserError):
    """Root of the build errors; the CLI prints these in one line and exits 2."""


class SpecError(BuildError):
    def __init__(self, message: str, field: str = ""):
        super().__init__(message)
        self.field = field


class ExportMismatch(BuildError):
    pass


class CalibrationError(BuildError):
    pass


class GateRefused(BuildError):
    def __init__(self, variant: str, reasons: tuple[str, ...] | list[str], fix: str):
        self.variant, self.reasons, self.fix = variant, tuple(reasons), fix
        super().__init__(f"variant {variant!r} refused by the gate: {'; '.join(reasons)}; nothing was published. "
                         f"Fix: {fix}.")


class RepositoryError(BuildError):
    pass


class ToolMissing(BuildError):
    pass


_SIGNALLED: list[int] = []      # signals the CLI's handlers saw, latest last (a library may swallow the exception)


def note_signal(signum: int) -> None:
    _SIGNALLED.append(signum)


def forget_signals() -> None:
    _SIGNALLED.clear()


def signal_seen() -> int | None:
    """The signal the CLI's handler saw, if any: torch's exporter turns a KeyboardInterrupt raised in
    its lazy imports into an error of its own, so the exception alone cannot tell."""
    return _SIGNALLED[-1] if _SIGNALLED else None


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM: what was interrupted and in what state it left things. A
    KeyboardInterrupt, so every ``except KeyboardInterrupt`` and ``finally`` clean-up still runs."""

    def __init__(self, signum: int, where: str = "", state: str = ""):
        super().__init__(where or "interrupted")
        self.signum, self.where, self.state = signum, where, state

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
