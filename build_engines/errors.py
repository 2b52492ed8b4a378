"""Errors of the build pipeline.

    BuildError                 root: every user-facing failure of a build
    ├── SpecError              the model spec file is wrong (names the field)
    ├── ExportMismatch         ONNX Runtime disagrees with PyTorch beyond tolerance
    ├── CalibrationError       calibration data missing or unusable
    ├── GateRefused            a variant lost more accuracy than the spec's budget
    ├── RepositoryError        a model folder or config is invalid; nothing was published
    └── ToolMissing            an optional tool (TensorRT, a GPU) is not on this machine
"""


class BuildError(Exception):
    """Root of the build errors; the CLI prints these in one line and exits 2."""


class SpecError(BuildError):
    pass


class ExportMismatch(BuildError):
    pass


class CalibrationError(BuildError):
    pass


class GateRefused(BuildError):
    def __init__(self, variant: str, metric: str, reference: float, value: float, budget: float, loss: float,
                 note: str = ""):
        self.variant, self.metric = variant, metric
        self.reference, self.value, self.budget, self.loss = reference, value, budget, loss
        super().__init__(
            f"variant {variant!r} refused by the accuracy gate: {metric} {value:.4f} vs FP32 {reference:.4f} "
            f"(loss {loss:.4f}, budget {budget:.4f}{note}); nothing was published. "
            f"Try another calibration method or raise [accuracy] budget in the spec."
        )


class RepositoryError(BuildError):
    pass


class ToolMissing(BuildError):
    pass
