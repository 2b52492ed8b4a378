import shutil

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from build_engines import repository
from build_engines.errors import RepositoryError, SpecError
from build_engines.repository import ServingConfig, Staging, model_config, parse_config, config_text
from build_engines.tensorrt import profile_shapes


@pytest.mark.parametrize("target", repository.TARGETS)
def test_config_round_trips_through_text_format(digits_spec, target):
    serving = ServingConfig(max_batch_size=32, preferred_batch_sizes=(4, 8), max_queue_delay_us=250, instances=2,
                            response_cache=True)
    cfg = model_config("digits_fp32", digits_spec, target, serving)
    back = parse_config(config_text(cfg))
    assert back == cfg
    assert repository.serving_from_config(back).preferred_batch_sizes == (4, 8)
    assert back.max_batch_size == 32 and back.dynamic_batching.max_queue_delay_microseconds == 250
    assert list(back.input[0].dims) == [1, 8, 8] and back.input[0].data_type == mc.TYPE_FP32
    assert back.response_cache.enable
    assert back.instance_group[0].count == 2


def test_gpu_target_configs_carry_platform_profile_and_kind(digits_spec):
    serving = ServingConfig.from_spec(digits_spec)
    trt = model_config("m", digits_spec, "tensorrt_plan", serving)
    assert trt.platform == "tensorrt_plan" and trt.default_model_filename == "model.plan"
    assert trt.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU and list(trt.instance_group[0].profile) == ["0"]
    ort = model_config("m", digits_spec, "onnxruntime", serving)
    assert ort.platform == "onnxruntime_onnx" and ort.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    cpu = model_config("m", digits_spec, "cpu", serving)
    assert cpu.backend == "python" and cpu.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert not cpu.default_model_filename  # the Python backend would read it as its script name


def test_tensorrt_profile_is_derived_from_max_batch_size(digits_spec):
    shapes = profile_shapes(digits_spec, ServingConfig(max_batch_size=48, preferred_batch_sizes=(4, 12)))
    assert shapes["image"] == ((1, 1, 8, 8), (12, 1, 8, 8), (48, 1, 8, 8))
    shapes = profile_shapes(digits_spec, ServingConfig(max_batch_size=48, preferred_batch_sizes=()))
    assert shapes["image"][1][0] == 48


def test_no_preferred_batch_size_is_a_valid_config(digits_spec):
    cfg = model_config("m", digits_spec, "cpu", ServingConfig(preferred_batch_sizes=()))
    assert cfg.HasField("dynamic_batching") and not cfg.dynamic_batching.preferred_batch_size
    off = model_config("m", digits_spec, "cpu", ServingConfig(dynamic_batching=False))
    assert not off.HasField("dynamic_batching")


@pytest.mark.parametrize("kwargs,field", [(dict(max_batch_size=0), "serving.max_batch_size"),
                                          (dict(preferred_batch_sizes=(128,)), "serving.preferred_batch_sizes"),
                                          (dict(instances=0), "serving.instances")])
def test_bad_serving_values_are_refused_naming_the_field(kwargs, field):
    with pytest.raises(SpecError, match=f"'{field}'"):
        ServingConfig(**kwargs)


def test_validate_refuses_missing_model_py(copy_repo):
    (copy_repo / "digits_fp32" / "1" / "model.py").unlink()
    with pytest.raises(RepositoryError, match="model.py is missing"):
        repository.validate_model_dir(copy_repo / "digits_fp32")


def test_validate_refuses_unparsable_config(copy_repo):
    (copy_repo / "digits_fp32" / "config.pbtxt").write_text("max_batch_size: lots\n")
    with pytest.raises(RepositoryError, match="does not parse"):
        repository.validate_model_dir(copy_repo / "digits_fp32")


def test_validate_refuses_missing_onnx(copy_repo):
    (copy_repo / "digits_int8" / "1" / "model.onnx").unlink()
    with pytest.raises(RepositoryError, match="model.onnx is missing"):
        repository.validate_model_dir(copy_repo / "digits_int8")


def test_failed_publish_leaves_the_repository_as_it_was(copy_repo, digits_spec):
    before = {p.relative_to(copy_repo): p.read_bytes() for p in copy_repo.rglob("*") if p.is_file()}
    staging = Staging(copy_repo)
    good = staging.model_dir("digits_fp32")
    shutil.copytree(copy_repo / "digits_int8", good)  # a valid replacement...
    (good / "config.pbtxt").write_text(config_text(model_config("digits_fp32", digits_spec, "cpu", ServingConfig())))
    bad = staging.model_dir("digits_fp16")
    shutil.copytree(copy_repo / "digits_fp16", bad)
    (bad / "1" / "model.py").unlink()                    # ...and a broken one: nothing may be published
    with pytest.raises(RepositoryError):
        staging.publish()
    after = {p.relative_to(copy_repo): p.read_bytes() for p in copy_repo.rglob("*") if p.is_file()}
    assert after == before
    assert not staging.root.exists()
    assert not [p for p in copy_repo.parent.iterdir() if ".staging-" in p.name or ".old-" in p.name]


def test_a_users_own_link_is_adopted_and_the_folder_it_named_is_never_deleted(copy_repo, tmp_path):
    """model_repository -> /elsewhere/models (the user's link): the first publish copies it into a
    generation beside the link and swaps the link; the user's folder keeps every byte."""
    from build_engines.repository import live_generation, unpublish
    theirs = tmp_path / "data" / "models"
    shutil.copytree(copy_repo, theirs)
    before = {p.relative_to(theirs): p.read_bytes() for p in theirs.rglob("*") if p.is_file()}
    link = tmp_path / "serve" / "model_repository"
    link.parent.mkdir()
    link.symlink_to(theirs)
    assert live_generation(link) is None                     # not ours: never to be deleted
    assert unpublish(link, ["digits_fp16"]) == ["digits_fp16"]
    assert sorted(p.name for p in link.iterdir()) == ["digits_fp32", "digits_int8"]
    assert live_generation(link) is not None and live_generation(link).parent == link.parent
    assert {p.relative_to(theirs): p.read_bytes() for p in theirs.rglob("*") if p.is_file()} == before
