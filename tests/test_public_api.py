"""The public names of each package are pinned: changing them is a deliberate act."""

import build_engines
import clients
import perf


def test_public_names_are_pinned():
    assert sorted(build_engines.__all__) == ["BuildError", "CalibrationError", "ExportMismatch", "GateRefused", "ModelSpec",
                                             "Pipeline", "RepositoryError", "ServingConfig", "SpecError", "ToolMissing",
                                             "load_spec", "model_config", "model_name", "read_config", "validate_model_dir"]
    assert sorted(clients.__all__) == ["AsyncTritonClient", "ClientError", "InferenceFailed", "InvalidInput", "LocalTriton",
                                       "ModelMeta", "ModelNotFound", "Overloaded", "RequestTimeout", "ServerError",
                                       "ServerUnavailable",
                                       "TensorMeta", "TritonClient"]
    assert sorted(perf.__all__) == ["CostError", "PerfAnalyzerError", "PerfError", "PerfPoint", "PerfSettings", "SlaUnmet",
                                    "TargetUnavailable", "UnstableMeasurement", "parse_csv", "sweep"]
    for mod in (build_engines, clients, perf):
        assert all(hasattr(mod, n) for n in mod.__all__)


def test_error_trees_keep_user_errors_apart():
    assert issubclass(build_engines.GateRefused, build_engines.BuildError)
    assert issubclass(clients.RequestTimeout, clients.ClientError) and not issubclass(clients.RequestTimeout, clients.ServerUnavailable)
    assert issubclass(perf.UnstableMeasurement, perf.PerfAnalyzerError)
