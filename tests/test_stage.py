import pytest
import yaml

from captioner.stage import StageError, atomic_path, choice, declared_params
from tests.conftest import run_stage


def test_declared_params_holds_only_what_dvc_yaml_lists(project):
    params = declared_params("train", project)
    assert set(params) == {"encoder", "decoder", "train"}
    assert params["decoder"]["rnn"] == "gru"
    with pytest.raises(KeyError, match="not declared"):
        params["dataset"]


def test_every_stage_param_exists_in_params_yaml(project):
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    for stage in stages:
        declared_params(stage, project)  # raises StageError on a name params.yaml lacks


def test_choice_names_the_bad_value_and_the_options():
    assert choice("gru", ("gru", "lstm"), "decoder.rnn") == "gru"
    with pytest.raises(StageError, match=r"unknown decoder.rnn 'rnn'; choose one of: gru, lstm"):
        choice("rnn", ("gru", "lstm"), "decoder.rnn")


def test_atomic_path_renames_into_place_on_success(tmp_path):
    target = tmp_path / "out" / "file.txt"
    with atomic_path(target) as temporary:
        temporary.write_text("done")
        assert not target.exists()
    assert target.read_text() == "done"
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]


def test_atomic_path_leaves_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "folder"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temporary:
            temporary.mkdir()
            (temporary / "half.txt").write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_replaces_an_existing_folder(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "old.txt").write_text("old")
    with atomic_path(tmp_path / "folder") as temporary:
        temporary.mkdir()
        (temporary / "new.txt").write_text("new")
    assert [p.name for p in (tmp_path / "folder").iterdir()] == ["new.txt"]


@pytest.mark.parametrize(
    ("stage", "param", "value", "message"),
    [
        ("download", "dataset", "coco", "error: unknown dataset 'coco'; choose one of: flickr8k, shapes"),
        ("extract_features", "encoder", "vgg17", "error: unknown encoder 'vgg17'; choose one of:"),
    ],
)
def test_unknown_param_value_is_one_line_and_exit_1(project, stage, param, value, message):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params[param] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    result = run_stage(project, stage)
    assert result.returncode == 1
    assert result.stderr.strip().startswith(message)
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (project / "data" / "raw").exists()
