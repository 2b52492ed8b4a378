"""PyTorch -> ONNX -> precision variants (FP16, INT8 Q/DQ) -> the gate -> Triton model repository.

Public names are imported on first use (PEP 562), so importing a submodule (the errors, the spec)
does not pull in torch.
"""

from importlib import import_module

_WHERE = {
    "BuildError": "errors", "CalibrationError": "errors", "ExportMismatch": "errors", "GateRefused": "errors",
    "RepositoryError": "errors", "SpecError": "errors", "ToolMissing": "errors",
    "Pipeline": "pipeline", "model_name": "pipeline",
    "ServingConfig": "repository", "model_config": "repository", "read_config": "repository",
    "validate_model_dir": "repository",
    "ModelSpec": "spec", "load_spec": "spec",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f"build_engines.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'build_engines' has no attribute {name!r}")
