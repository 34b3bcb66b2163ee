"""The param rules (captioner.params): every param has one, and a bad value is one line naming it."""

import pytest
import yaml

from captioner import params as declarations
from captioner.params import PARAMS, RULES, ParamError, check, check_feature_batch, check_memory, settings
from captioner.stage import _read_yaml
from tests.conftest import PROJECT, run_stage
from tests.test_project import flatten


def test_params_yaml_and_its_reference_are_written_from_the_declarations_and_hold_their_defaults(tmp_path):
    """``python -m captioner.params`` writes both; a declaration changed without it fails here."""
    assert (PROJECT / "params.yaml").read_text() == declarations.params_yaml()
    reference = (PROJECT / "docs" / "params.md").read_text()
    assert reference == declarations.reference_with_table(reference)
    (tmp_path / "params.yaml").write_text(declarations.params_yaml())
    values = _read_yaml(tmp_path / "params.yaml")  # as DVC reads it
    assert set(flatten(values)) == set(PARAMS)
    for name, param in PARAMS.items():
        value = values
        for part in name.split("."):
            value = value[part]
        assert value == param.default and type(value) is type(param.default), name
    for section, value in values.items():
        check(section, value)


def test_a_settings_class_takes_its_fields_types_and_defaults_from_the_declarations():
    @settings("evaluate", "encoder", leave_out=("evaluate.max_len",))
    class Decoding:
        note: str = "own fields first"

    chosen = Decoding()
    assert [item for item in vars(chosen)] == ["note", "beam_size", "length_penalty", "encoder"]
    assert chosen.beam_size == PARAMS["evaluate.beam_size"].default and chosen.encoder == "efficientnet_lite0"
    assert declarations.param_fields(Decoding) == {
        "beam_size": "evaluate.beam_size",
        "length_penalty": "evaluate.length_penalty",
        "encoder": "encoder",
    }
    with pytest.raises(AttributeError):
        chosen.beam_size = 5  # frozen, like every config


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("train.batch_size", 0, "train.batch_size is 0; it must be an integer ≥ 1"),
        ("decoder.units", -3, "decoder.units is -3; it must be an integer ≥ 1"),
        ("decoder.units", "big", "decoder.units is 'big'; it must be an integer ≥ 1"),
        ("decoder.units", 12.5, "decoder.units is 12.5; it must be an integer ≥ 1"),
        ("decoder.train_embeddings", "yes", "decoder.train_embeddings is 'yes'; it must be true or false"),
        ("decoder.dropout", 1.0, "decoder.dropout is 1.0; it must be a finite number ≥ 0 and < 1"),
        ("decoder.dropout", True, "decoder.dropout is True; it must be a finite number ≥ 0 and < 1"),
        ("train.learning_rate", 0, "train.learning_rate is 0; it must be a finite number > 0"),
        ("evaluate.beam_size", 0, "evaluate.beam_size is 0; it must be an integer ≥ 1"),
        ("features.image_size", 8, "features.image_size is 8; it must be an integer ≥ 32 and ≤ 2048 or null"),
        ("train.learning_rate", float("inf"), "train.learning_rate is inf; it must be a finite number > 0"),
        ("train.clipnorm", float("nan"), "train.clipnorm is nan; it must be a finite number > 0"),
        ("decoder.units", 10**9, "decoder.units is 1000000000; it must be an integer ≥ 1 and ≤ 16384"),
        ("evaluate.beam_size", 10**6, "evaluate.beam_size is 1000000; it must be an integer ≥ 1 and ≤ 100"),
        ("shapes.num_images", 10**12, "shapes.num_images is 1000000000000; it must be an integer ≥ 10 and ≤ 1000000"),
        ("flickr8k.text_sha256", "abc", "flickr8k.text_sha256 is 'abc'; it must be text matching"),
        ("train.self_critical_samples", 1, "train.self_critical_samples is 1: each sample's baseline is the others'"),
        ("dataset", "coco", "unknown dataset 'coco'; choose one of: flickr8k, karpathy, shapes"),
        ("train.precision", "float16", "unknown train.precision 'float16'; choose one of: float32, mixed_bfloat16,"),
        ("karpathy.image_urls", "a.zip", "karpathy.image_urls is 'a.zip'; it must be a list, each entry text or null"),
        ("karpathy.image_sha256", ["abc"], "karpathy.image_sha256 is ['abc']; it must be a list, each entry text "),
        ("ensemble", {"a b": {}}, "ensemble member name 'a b': use letters, digits, _ and - (it names a folder)"),
        ("ensemble", {"s2": {"vocab": {"min_count": 1}}}, "ensemble.s2 is {'vocab': {'min_count': 1}}; it must set"),
        ("ensemble.s2", {"train": {"seed": -1}}, "train.seed is -1; it must be an integer ≥ 0"),
        ("ensemble", [1], "ensemble is [1]; it must map member names to their params"),
        ("karpathy.split_file", "x/y.json", "karpathy.split_file is 'x/y.json'; it must be text matching"),
        ("train", {"bach_size": 8}, "params.yaml has train.bach_size, which is no param of this pipeline (a typo?)"),
    ],
)
def test_a_value_outside_its_rule_names_the_param_the_value_and_what_is_allowed(name, value, message):
    with pytest.raises(ParamError) as caught:
        check(name, value)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("stage", "section", "key", "value", "message"),
    [
        ("train", "train", "batch_size", 0, "error: train.batch_size is 0; it must be an integer ≥ 1 and ≤ 65536"),
        ("train", "decoder", "units", -512, "error: decoder.units is -512; it must be an integer ≥ 1 and ≤ 16384"),
        ("train", "decoder", "units", "many", "error: decoder.units is 'many'; it must be an integer ≥ 1 and ≤ 16384"),
        ("evaluate", "evaluate", "beam_size", 0, "error: evaluate.beam_size is 0; it must be an integer ≥ 1 and ≤ 100"),
        (
            "download",
            "shapes",
            "dev_fraction",
            0,
            "error: shapes.dev_fraction is 0; it must be a finite number > 0 and < 1",
        ),
    ],
)
def test_a_stage_refuses_a_bad_param_before_any_work_with_one_line(project, stage, section, key, value, message):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params[section][key] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    result = run_stage(project, stage)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == message
    assert "Traceback" not in result.stderr
    assert not (project / "metrics").exists() and not (project / "data").exists() and not (project / "models").exists()


def test_size_params_that_fit_alone_but_not_together_are_refused_before_any_work(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["features"] |= {"batch_size": 4096, "image_size": 2048}  # each within its bounds
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    result = run_stage(project, "extract_features")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: features.batch_size 4096 × features.image_size 2048² needs ~3040 GB at once, more")
    assert not (project / "data" / "features").exists()


def test_the_memory_rule_refuses_only_what_cannot_fit():
    gigabytes = 8 * 2**30
    presets = {"features": {"batch_size": 64, "image_size": None}, "train": {"batch_size": 32, "finetune_from": "x"}}
    check_memory(presets, gigabytes)  # a fine-tuning preset on an 8 GB laptop
    check_memory({"train": {"batch_size": 65536, "finetune_from": None}}, gigabytes)  # cached features: no images
    with pytest.raises(ParamError, match=r"train.batch_size 1024 × features.image_size 300² needs ~16 GB at once"):
        check_memory({"features": {"image_size": None}, "train": {"batch_size": 1024, "finetune_from": "x"}}, gigabytes)


def test_a_train_batch_of_feature_grids_is_checked_against_memory():
    gigabytes = 8 * 2**30
    check_feature_batch(128, (49, 1280), gigabytes)  # the Flickr8k attention preset: 64 MB a batch
    with pytest.raises(ParamError, match=r"train.batch_size 65536 × features of 4096 × 1280 needs ~2560 GB at once"):
        check_feature_batch(65536, (4096, 1280), gigabytes)  # a 2048-px grid, batch at its bound


def test_every_size_like_param_has_an_upper_bound_a_machine_can_hold():
    """Seeds and min_count are not sizes; every other whole number sizes something a run allocates or repeats."""
    not_sizes = {"shapes.seed", "train.seed", "vocab.min_count"}
    unbounded = [name for name, rule in RULES.items() if rule.kind == "integer" and rule.high is None]
    assert sorted(unbounded) == sorted(not_sizes)
