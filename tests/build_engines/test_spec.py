import textwrap

import pytest

from build_engines.errors import SpecError
from build_engines.pipeline import Pipeline
from build_engines.spec import load_spec

GOOD = """
name = "dbl"
factory = "model_fixtures:doubler"
[[inputs]]
name = "x"
dtype = "float32"
shape = [4]
[[outputs]]
name = "y"
dtype = "float32"
shape = [4]
[data]
evaluation = "model_fixtures:doubler_eval"
[accuracy]
metric = "embedding"
budget = 0.01
"""


def write(tmp_path, text):
    p = tmp_path / "spec.toml"
    p.write_text(textwrap.dedent(text))
    return p


def test_bundled_digits_spec_loads(digits_spec):
    assert digits_spec.inputs[0].shape == (1, 8, 8)
    assert digits_spec.serving.max_batch_size == 64
    assert digits_spec.metric == "top1" and digits_spec.budget == 0.5


@pytest.mark.parametrize("old,new,field", [
    ('factory = "model_fixtures:doubler"\n', "", "'factory' is missing"),
    ("model_fixtures:doubler\"", "model_fixtures:nope\"", "'factory'"),
    ("model_fixtures:doubler\"", "no_such_pkg.mod:fn\"", "'factory'"),
    ("shape = [4]\n[[outputs]]", "shape = [0]\n[[outputs]]", "'inputs[0].shape'"),
    ('dtype = "float32"\nshape = [4]\n[[outputs]]', 'dtype = "float99"\nshape = [4]\n[[outputs]]', "'inputs[0].dtype'"),
    ('metric = "embedding"', 'metric = "bleu"', "'accuracy.metric'"),
    ("budget = 0.01", "budget = 0.01\nagreement_min = 2", "'accuracy.agreement_min'"),
    ("budget = 0.01", "budget = 0.01\nmax_relative_error = -1", "'accuracy.max_relative_error'"),
    ("[accuracy]", "kind = \"made-up\"\n[accuracy]", "'data.kind'"),
    ("[accuracy]", "[export]\ndynamic_range = [64, 16, 128]\n[accuracy]", "'export.dynamic_range'"),
    ("[accuracy]", "[quantization]\ncpu_recipe = \"fast\"\n[accuracy]", "'quantization.cpu_recipe'"),
    ("[accuracy]", "[serving]\ninstances = 0\n[accuracy]", "'serving.instances'"),
    ("[accuracy]", "[serving]\ninstance = 2\n[accuracy]", "'serving.instance' is unknown"),
    ("[accuracy]", "[serving]\nmax_batch_size = 4\npreferred_batch_sizes = [8]\n[accuracy]", "'serving.preferred_batch_sizes'"),
    ("[accuracy]", "[cache]\nignore_inputs = [\"session_id\"]\n[accuracy]", "'cache.ignore_inputs'"),
    ("[accuracy]", "[cache]\nttl_s = 0\n[accuracy]", "'cache.ttl_s'"),
    ("[accuracy]", "[cache]\nttl = 60\n[accuracy]", "'cache.ttl' is unknown"),
])
def test_bad_spec_names_the_field(tmp_path, old, new, field):
    bad = GOOD.replace(old, new, 1)
    assert bad != GOOD
    with pytest.raises(SpecError) as e:
        load_spec(write(tmp_path, bad))
    assert field in str(e.value)
    assert "\n" not in str(e.value)


def test_factory_must_return_a_module(tmp_path):
    spec = load_spec(write(tmp_path, GOOD.replace('"model_fixtures:doubler"', '"model_fixtures:not_a_module"')))
    repo = tmp_path / "repo"
    with pytest.raises(SpecError, match="'factory'.*not a torch.nn.Module"):
        Pipeline(spec, tmp_path / "b", precisions=("fp32",)).run(repo, bench=False, tensorrt=False)
    assert not repo.exists()


def test_wrong_declared_shape_fails_the_build_and_publishes_nothing(tmp_path):
    # The model takes [batch, 4]; the spec says [batch, 5]: the exported graph cannot match.
    spec = load_spec(write(tmp_path, GOOD.replace("shape = [4]\n[[outputs]]", "shape = [5]\n[[outputs]]")))
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "keep.txt").write_text("untouched")
    from build_engines.errors import BuildError
    with pytest.raises(BuildError):
        Pipeline(spec, tmp_path / "b", precisions=("fp32",)).run(repo, bench=False, tensorrt=False)
    assert sorted(p.name for p in repo.iterdir()) == ["keep.txt"]


def test_byo_model_builds_and_publishes(tmp_path):
    spec = load_spec(write(tmp_path, GOOD))
    res = Pipeline(spec, tmp_path / "b", precisions=("fp32", "fp16")).run(tmp_path / "repo", bench=False, tensorrt=False)
    assert res.published == ["dbl_fp16", "dbl_fp32"]
    assert res.gates["fp16"].passed and res.gates["fp16"].value > 0.999


@pytest.mark.parametrize("fn,why", [("model_fixtures:not_a_module", "must return"),
                                    ("model_fixtures:eval_wrong_inputs", "batch 0 has inputs"),
                                    ("model_fixtures:eval_ragged_labels", "mixes batch sizes")])
def test_bad_evaluation_data_names_the_field(tmp_path, fn, why):
    spec = load_spec(write(tmp_path, GOOD.replace("model_fixtures:doubler_eval", fn)))
    with pytest.raises(SpecError, match=f"'data.evaluation'.*{why}"):
        spec.evaluation_batches()


def test_a_backlog_bound_on_a_variable_length_input_is_refused_in_one_line(tmp_path):
    """Its requests never share a batch, so batches never fill and the bound would never hold
    (ort_model.Backlog): the spec says so instead of publishing a bound that does nothing."""
    bound = GOOD.replace("[accuracy]", "[serving]\nbacklog_max = 100\n[accuracy]", 1)
    assert load_spec(write(tmp_path, bound)).serving.backlog_max == 100       # fixed shape: fine
    ragged = bound.replace("shape = [4]\n[[outputs]]", "shape = [-1]\n[[outputs]]", 1)
    assert ragged != bound
    with pytest.raises(SpecError) as e:
        load_spec(write(tmp_path, ragged))
    assert "'serving.backlog_max'" in str(e.value) and "variable-length" in str(e.value) and "\n" not in str(e.value)
