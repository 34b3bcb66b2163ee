import os
import subprocess
import sys

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from captioner import CaptionerError
from captioner.files import atomic_path
from captioner.layout import SPLITS
from captioner.params import choice
from captioner.stage import _read_yaml, declared_params
from tests.conftest import run_stage


def test_declared_params_holds_only_what_dvc_yaml_lists_and_the_speed_section(project):
    params = declared_params("train", project)
    assert set(params) == {"dataset", "encoder", "decoder", "train", "speed"}
    assert params["decoder"]["rnn"] == "gru"
    with pytest.raises(KeyError, match="not declared"):
        params["evaluate"]


def test_declared_params_may_be_single_params_and_remember_what_was_read(project):
    dvc_yaml = project / "dvc.yaml"
    listed = dvc_yaml.read_text().replace("[dataset, encoder, decoder, train]", "[encoder, decoder, train.seed]")
    dvc_yaml.write_text(listed)
    params = declared_params("train", project)
    assert params["speed"]["threads_per_op"] == 1  # not listed, readable by every stage
    with pytest.raises(KeyError, match="param 'train.clipnorm' is not declared"):
        params["train"]["clipnorm"]
    merged = params["train"].merged({"seed": 5})
    assert merged["seed"] == 5 and params["train"]["seed"] == 1
    assert params.read == {"speed.threads_per_op", "train.seed"}
    dict(params["decoder"])  # copying reads every value
    assert {"decoder.units", "decoder.rnn"} <= params.read
    params_yaml = project / "params.yaml"
    params_yaml.write_text(params_yaml.read_text().replace("  clipnorm: 5.0", "  clipnrom: 5.0"))
    with pytest.raises(CaptionerError, match="params.yaml has train.clipnrom, which is no param"):
        declared_params("train", project)


def test_a_stage_listing_params_of_another_file_is_one_line(project):
    dvc_yaml = project / "dvc.yaml"
    dvc_yaml.write_text(dvc_yaml.read_text().replace("- params.yaml: &train_params", "- other.yaml: &train_params"))
    with pytest.raises(CaptionerError, match="dvc.yaml: stage train lists params of other.yaml; stages read params"):
        declared_params("train", project)


def test_every_stage_param_exists_in_params_yaml(project):
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    for stage in stages:
        declared_params(stage, project)  # raises CaptionerError on a name params.yaml lacks


def test_choice_names_the_bad_value_and_the_options():
    assert choice("gru", ("gru", "lstm"), "decoder.rnn") == "gru"
    with pytest.raises(CaptionerError, match=r"unknown decoder.rnn 'rnn'; choose one of: gru, lstm"):
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
        ("download", "dataset", "coco", "error: unknown dataset 'coco'; choose one of: flickr8k, karpathy, shapes"),
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


def test_a_killed_run_leaves_scratch_that_the_next_write_of_the_same_target_removes(tmp_path):
    import signal
    import subprocess
    import sys

    target = tmp_path / "data" / "raw"
    writer = (
        "import sys, time; from pathlib import Path; from captioner.files import atomic_path\n"
        "with atomic_path(Path(sys.argv[1])) as temporary:\n"
        "    temporary.mkdir(); (temporary / 'half.bin').write_bytes(b'x' * 1000); print('writing', flush=True)\n"
        "    time.sleep(60)\n"
    )
    killed = subprocess.Popen([sys.executable, "-c", writer, str(target)], stdout=subprocess.PIPE, text=True)
    assert killed.stdout.readline() == "writing\n"
    live = subprocess.Popen([sys.executable, "-c", writer, str(target)], stdout=subprocess.PIPE, text=True)
    assert live.stdout.readline() == "writing\n"
    killed.send_signal(signal.SIGKILL)  # no finally clause runs: its scratch stays
    killed.wait()
    (target.parent / ".raw.tmp4x2_.tmp").mkdir()  # the name an earlier version gave its scratch
    scratch = sorted(p.name for p in target.parent.iterdir())
    assert len(scratch) == 3 and all(name.startswith(".raw.") for name in scratch)
    live_scratch = [name for name in scratch if name.startswith(f".raw.{live.pid}.")]
    assert len(live_scratch) == 1
    try:
        with atomic_path(target) as temporary:
            temporary.write_text("whole")
        assert sorted(p.name for p in target.parent.iterdir()) == [*live_scratch, "raw"]  # a live writer's stays
        assert target.read_text() == "whole"
    finally:
        live.kill()
        live.wait()


def test_text_lines_skip_a_byte_order_mark_and_name_the_line_of_a_byte_that_is_not_utf8(tmp_path):
    from captioner.files import read_text, text_lines

    path = tmp_path / "list.txt"
    path.write_bytes("\ufeffa.jpg\r\nb.jpg\nc\u00e9.jpg\n".encode())
    assert list(text_lines(path)) == ["a.jpg", "b.jpg", "c\u00e9.jpg"]
    assert read_text(path) == "a.jpg\nb.jpg\nc\u00e9.jpg"
    path.write_bytes(b"a.jpg\nb.jpg\ncaf\xe9 au lait\n")  # latin-1
    with pytest.raises(CaptionerError, match=r"list.txt:3: byte 0xe9 at column 4 is not UTF-8; save the file as UTF-8"):
        list(text_lines(path))
    with pytest.raises(CaptionerError, match="gone.txt is missing"):
        list(text_lines(tmp_path / "gone.txt"))


def test_clean_captions_with_an_empty_dev_list_exits_1_writing_nothing(project, shapes_raw):
    import shutil

    shutil.copytree(shapes_raw, project / "data" / "raw")
    (project / "data" / "raw" / "Flickr_8k.devImages.txt").write_text("\n")
    result = run_stage(project, "clean_captions")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: the dev split has no usable captions (0 images listed in Flickr_8k.devImages.txt, "
        "0 caption lines skipped); every split needs some"
    )
    assert not (project / "data" / "captions").exists()


def _features_of(project, images, channels=8):
    """A features file for ``images`` as extract_features writes it (pooled), without running an encoder."""
    import h5py
    import numpy as np

    path = project / "data" / "features" / "efficientnet_lite0.h5"
    path.parent.mkdir(parents=True)
    with h5py.File(path, "w") as store:
        store["features"] = np.ones((len(images), channels), dtype=np.float16)
        store.create_dataset("image_ids", data=np.array(images, dtype=object), dtype=h5py.string_dtype())
        store.attrs.update(encoder="efficientnet_lite0", weights="test", weights_param="imagenet", input_size=224,
                           pooling="avg", preprocessing="test")  # fmt: skip


@pytest.mark.parametrize(
    ("stage", "without", "message"),
    [
        ("train", "dev", "error: no dev caption is usable (30 longer than the vocabulary's"),
        ("evaluate", "test", "error: no test image has both captions and features in data/features/efficient"),
    ],
)
def test_train_and_evaluate_refuse_a_split_whose_images_have_no_features(project, shapes_raw, stage, without, message):
    import shutil

    shutil.copytree(shapes_raw, project / "data" / "raw")
    for prepare in ("clean_captions", "build_vocab"):
        assert run_stage(project, prepare).returncode == 0
    names = {split: (shapes_raw / f"Flickr_8k.{split}Images.txt").read_text().split() for split in SPLITS}
    _features_of(project, [name for split in SPLITS if split != without for name in names[split]])
    result = run_stage(project, stage)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(message)
    assert not (project / "models").exists() and not (project / "metrics").exists()


@pytest.mark.parametrize(("threads_per_op", "member", "precision"), [(1, None, "float32"), (0, "b", "mixed_bfloat16")])
def test_the_train_stage_readies_its_process_with_the_threads_per_op_and_precision_of_its_model(
    project, threads_per_op, member, precision
):
    from stages import train

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["speed"]["threads_per_op"] = threads_per_op
    params["ensemble"] = {"b": {"train": {"precision": "mixed_bfloat16"}}}  # a member's own precision
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    settings = train.process_for(declared_params("train", project, member=member))
    assert settings == {"threads_per_op": threads_per_op, "precision": precision}
    params["train"]["self_critical_epochs"], params["train"]["finetune_from"] = 2, "top_conv"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(CaptionerError, match="self_critical_epochs needs a frozen encoder"):
        train.process_for(declared_params("train", project))  # the config is checked before TensorFlow starts


def test_any_stage_run_removes_dead_writers_scratch_anywhere_under_the_outputs(project, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = [project / "data" / "features" / f".lite0.h5.{pid}.ab12_x.tmp", project / "models" / f".m.{pid}.zz.tmp"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    live = project / "metrics" / f".scores.json.{os.getpid()}.ab.tmp"
    live.parent.mkdir()
    live.mkdir()
    (project / "data" / "keep.tmp").write_text("not a temporary of ours")
    result = run_stage(project, "build_vocab")  # fails (no captions), after the clean-up
    assert result.returncode == 1
    assert not any(path.exists() for path in stale) and live.exists() and (project / "data" / "keep.tmp").exists()


# Under a 4 KB file-size limit, a file written by Python and one by TensorFlow's own writer (as a SavedModel is).
WRITES = """
import sys
from captioner import CaptionerError
from captioner.files import atomic_path, write_text
try:
    write_text(sys.argv[1], "x" * 100_000)
except CaptionerError as err:
    print(err)
import tensorflow as tf
try:
    with atomic_path(sys.argv[2]) as temporary:
        tf.io.write_file(str(temporary), "x" * 100_000)
except CaptionerError as err:
    print(err)
"""


@pytest.mark.e2e  # TensorFlow in a process of its own
def test_a_write_the_machine_refuses_is_one_line_naming_the_path_whoever_writes(tmp_path):
    import resource

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    targets = [tmp_path / "out" / "big.txt", tmp_path / "out" / "saved_model.pb"]
    result = subprocess.run(
        [sys.executable, "-c", WRITES, *map(str, targets)], capture_output=True, text=True, preexec_fn=small_files
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2, lines
    for line, target in zip(lines, targets, strict=True):
        assert line.endswith(f"File too large (while writing {target})"), line
    assert list(targets[0].parent.iterdir()) == []


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789eE.+-_:oxbOXyesnYESNtrufalTRUFAL~", max_size=8))
def test_params_yaml_is_read_as_dvc_reads_it(tmp_path_factory, scalar):
    """The scalars YAML 1.1 and 1.2 read differently (``yes``, ``1e-3``, ``014``, ``1:20``…): what a stage reads is
    what DVC records in dvc.lock."""
    from dvc.utils.serialize import parse_yaml

    path = tmp_path_factory.mktemp("params") / "params.yaml"
    path.write_text(f"a: {scalar}\n")
    try:
        dvc_reads = parse_yaml(path.read_text(), str(path))
    except Exception:  # noqa: BLE001 (DVC refuses it: so must we)
        with pytest.raises(CaptionerError, match="params.yaml: not readable YAML"):
            _read_yaml(path)
        return
    ours = _read_yaml(path)
    assert ours == dvc_reads and type(ours["a"]) is type(dvc_reads["a"])


def test_a_params_file_with_aliases_or_of_megabytes_is_one_line_before_it_expands(project):
    params = project / "params.yaml"
    params.write_text(params.read_text() + "bomb: &a [x, x, x, x, x, x, x, x]\nmore: &b [*a, *a, *a, *a, *a, *a, *a]\n")
    with pytest.raises(CaptionerError, match=r"params.yaml: uses a YAML alias \(\*name\); write each value out"):
        declared_params("train", project)
    params.write_text("# " + "x" * (2 << 20) + "\n")
    with pytest.raises(CaptionerError, match="params.yaml: 2 MB, not a params file"):
        declared_params("train", project)
