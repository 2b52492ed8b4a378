"""PyTorch -> ONNX -> precision variants (FP16, INT8 Q/DQ) -> accuracy gate -> Triton model repository."""

from build_engines.errors import (BuildError, CalibrationError, ExportMismatch, GateRefused, RepositoryError, SpecError,
                                  ToolMissing)
from build_engines.pipeline import Pipeline, model_name
from build_engines.repository import ServingConfig, model_config, read_config, validate_model_dir
from build_engines.spec import ModelSpec, load_spec

__all__ = ["BuildError", "CalibrationError", "ExportMismatch", "GateRefused", "ModelSpec", "Pipeline", "RepositoryError",
           "ServingConfig", "SpecError", "ToolMissing", "load_spec", "model_config", "model_name", "read_config",
           "validate_model_dir"]
