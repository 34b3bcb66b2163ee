"""Every artifact a stage or the caption command reads back, damaged three ways (truncated, random bytes, the wrong
shape) or disagreeing with another: one ``error:`` line naming the file and how to get a good one, exit 1, no
traceback, outputs unchanged. The readers run in this process (a stage script as ``python stages/<stage>.py``
would run it), on a small project whose artifacts the library writes directly."""

import contextlib
import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from captioner import artifacts, cli, report
from captioner.datasets import clean_release, shapes, write_captions
from captioner.layout import SPLITS, Layout
from captioner.model import checkpoint
from captioner.model.decoder import architecture
from captioner.model.spec import DecoderSpec
from captioner.text import Vocabulary
from tests.conftest import copy_project
from tests.conftest import run_stage as run_stage_in
from tests.test_stage import _features_of

SPEC = DecoderSpec("gru", "inject", units=16, embedding_dim=8, dropout=0.0)
OUTPUTS = ("models", "metrics")  # what the readers below may write; each must stay as it was


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A project whose data, vocabulary, features, model and scores are whole (the model untrained)."""
    root = tmp_path_factory.mktemp("pristine")
    copy_project(root)
    raw = Layout(root).raw
    shapes.generate(raw, num_images=20, image_size=32, dev_fraction=0.25, test_fraction=0.25, seed=1)
    release = clean_release(raw)
    for split in SPLITS:
        write_captions(Layout(root).split_captions(split), release.captions[split])
    vocab = Vocabulary.build([tokens for _, tokens in release.captions["train"]], min_count=1, max_length=34)
    vocab.save(Layout(root).vocab)
    _features_of(root, sorted({image for pairs in release.captions.values() for image, _ in pairs}))
    attrs = {"encoder": "efficientnet_lite0", "weights": "test", "weights_param": "imagenet", "input_size": 224}
    model = architecture(SPEC, len(vocab)).build((8,))
    checkpoint.save(Layout(root).models, model, attrs, vocab, SPEC, {"dataset": "shapes"})
    Layout(root).scores.parent.mkdir()
    scores = {"bleu4": 0.5, "cider": 1.2, "meteor": 0.4, "rouge_l": 0.6, "finetune_from": None, "beam_size": 3}
    Layout(root).scores.write_text(json.dumps(scores))
    return root


@pytest.fixture
def project(pristine, tmp_path) -> Path:
    shutil.copytree(pristine, tmp_path, dirs_exist_ok=True)
    return tmp_path


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for folder in OUTPUTS
        for path in sorted((root / folder).rglob("*"))
        if path.is_file()
    }


def run_stage(root: Path, stage: str, monkeypatch) -> tuple[int, str]:
    """``python stages/<stage>.py`` in this process: (exit status, stderr)."""
    result = run_stage_in(root, stage)
    return result.returncode, result.stderr


def run_caption(root: Path, monkeypatch) -> tuple[int, str]:
    monkeypatch.chdir(root)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        status = cli.main([str(next((Layout(root).images).iterdir()))])
    return status, stderr.getvalue()


def truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, max(path.stat().st_size, 64), np.uint8).tobytes())


def edit_json(change):
    def corrupt(path: Path) -> None:
        path.write_text(json.dumps(change(json.loads(path.read_text()))))

    return corrupt


def other_model(path: Path) -> None:
    """A whole Keras model of another size than the card says."""
    card = json.loads((path.parent / checkpoint.CARD_FILE).read_text())
    architecture(DecoderSpec("gru", "inject", 12, 8, 0.0), card["vocabulary_size"]).build((8,)).save(path)


def other_features(path: Path) -> None:
    import h5py

    with h5py.File(path, "a") as store:
        del store["features"]
        store["features"] = np.ones((3, 8), np.float16)  # three rows for every image name


LAYOUT = Layout()  # paths relative to the project folder, which the stages run from
MODEL, CARD = LAYOUT.models / checkpoint.MODEL_FILE, LAYOUT.models / checkpoint.CARD_FILE
FEATURES = LAYOUT.features_file("efficientnet_lite0")
CASES = {
    "model truncated": (MODEL, truncated, ["evaluate", "caption"]),
    "model random": (MODEL, random_bytes, ["evaluate", "caption"]),
    "model of another size": (MODEL, other_model, ["evaluate", "caption"]),
    "card truncated": (CARD, truncated, ["evaluate", "caption"]),
    "card random": (CARD, random_bytes, ["evaluate", "caption"]),
    "card vocabulary short": (CARD, edit_json(lambda c: c | {"vocabulary": c["vocabulary"][1:]}), ["evaluate"]),
    "card vocabulary not words": (CARD, edit_json(lambda c: c | {"vocabulary": 5}), ["caption"]),
    "card spec not the model's": (
        CARD,
        edit_json(lambda c: c | {"decoder": c["decoder"] | {"arch": "merge"}}),
        ["evaluate", "caption"],
    ),
    "card spec of bad values": (CARD, edit_json(lambda c: c | {"decoder": c["decoder"] | {"units": "x"}}), ["caption"]),
    "vocabulary truncated": (LAYOUT.vocab, truncated, ["train", "evaluate"]),
    "vocabulary random": (LAYOUT.vocab, random_bytes, ["train", "evaluate"]),
    "vocabulary of the wrong shape": (LAYOUT.vocab, edit_json(lambda v: v | {"tokens": "abc"}), ["train", "evaluate"]),
    "vocabulary not the model's": (LAYOUT.vocab, edit_json(lambda v: v | {"tokens": v["tokens"][:-1]}), ["evaluate"]),
    "features truncated": (FEATURES, truncated, ["train", "evaluate"]),
    "features random": (FEATURES, random_bytes, ["train", "evaluate"]),
    "features of the wrong shape": (FEATURES, other_features, ["train", "evaluate"]),
    "params truncated": (Path("params.yaml"), truncated, ["train", "evaluate"]),
    "params random": (Path("params.yaml"), random_bytes, ["train", "evaluate"]),
    "params a list": (Path("params.yaml"), lambda path: path.write_text("- train\n- evaluate\n"), ["train"]),
}


@pytest.mark.parametrize(
    ("case", "reader"), [(case, reader) for case, (_, _, readers) in CASES.items() for reader in readers]
)
def test_a_damaged_artifact_is_one_error_line_naming_it_and_nothing_is_written(project, monkeypatch, case, reader):
    path, corrupt, _ = CASES[case]
    corrupt(project / path)
    before = snapshot(project)
    if reader == "caption":
        status, stderr = run_caption(project, monkeypatch)
    else:
        status, stderr = run_stage(project, reader, monkeypatch)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and status == 1, f"{case} / {reader}: exit {status}, stderr:\n{stderr}"
    assert lines[0].startswith("caption: error: " if reader == "caption" else "error: ")
    culprit = "data/vocab.json" if case == "vocabulary not the model's" else str(path)
    assert culprit in lines[0] or path.name in lines[0], lines[0]
    assert snapshot(project) == before


def test_the_remedy_names_the_stage_that_writes_the_file_and_how_to_restore_it(pristine, monkeypatch):
    monkeypatch.chdir(pristine)
    assert artifacts.remedy("models/captioner.keras") == (
        "`dvc checkout models` restores it, or `dvc repro -f -s train` rebuilds it"
    )
    assert "`dvc repro -f -s train_member@seed2`" in artifacts.remedy("ensemble/seed2/captioner.json")
    assert "`git checkout metrics/scores.json`" in artifacts.remedy("metrics/scores.json")
    assert "extract_features" in artifacts.remedy("data/features/resnet50.h5")
    assert artifacts.remedy("/elsewhere/model.keras") == "rebuild it with `dvc repro`, or point at a good copy"


def test_the_remedy_of_a_dvc_output_says_whether_the_cache_holds_good_bytes(tmp_path, monkeypatch):
    """A file output and a file inside a folder output, their cache objects good, missing, or corrupt (a corrupt cache
    or remote object, which `dvc checkout` would only copy back)."""
    import yaml

    shutil.copy(Path(__file__).parents[1] / "dvc.yaml", tmp_path / "dvc.yaml")
    cache = tmp_path / ".dvc" / "cache" / "files" / "md5"

    def cached(content: bytes, suffix: str = "") -> str:
        digest = hashlib.md5(content).hexdigest() + suffix  # DVC names a folder's manifest <md5>.dir
        (cache / digest[:2]).mkdir(parents=True, exist_ok=True)
        (cache / digest[:2] / digest[2:]).write_bytes(content)
        return digest

    features, model = cached(b"features"), cached(b"weights")
    manifest = cached(json.dumps([{"md5": model, "relpath": "captioner.keras"}]).encode(), ".dir")
    outs = {
        "extract_features": [{"path": "data/features/x.h5", "md5": features}],
        "train": [{"path": "models", "md5": manifest}],
    }
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"stages": {stage: {"outs": o} for stage, o in outs.items()}}))
    monkeypatch.chdir(tmp_path)
    assert artifacts.remedy("data/features/x.h5").startswith("`dvc checkout data/features/x.h5` restores it")
    assert artifacts.remedy("models/captioner.keras").startswith("`dvc checkout models` restores it")
    (cache / model[:2] / model[2:]).write_bytes(b"weights, corrupted in place")
    assert artifacts.remedy("models/captioner.keras") == (
        "DVC's cached copy is damaged too (a corrupt cache or remote): `dvc repro -f -s train` rebuilds it"
    )
    (cache / features[:2] / features[2:]).unlink()
    assert artifacts.remedy("data/features/x.h5").startswith("`dvc pull data/features/x.h5` restores it")


@pytest.mark.parametrize("corrupt", [truncated, random_bytes, lambda path: path.write_text('{"bleu4": "high"}')])
@pytest.mark.parametrize("command", [report.diff_main, report.experiments_main])
def test_caption_diff_and_caption_exps_refuse_damaged_scores_naming_the_file(
    project, monkeypatch, capsys, corrupt, command
):
    monkeypatch.chdir(project)
    report.check_scores()  # the whole file passes: scores are numbers, settings beside them need not be
    corrupt(project / LAYOUT.scores)
    assert command([]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "metrics/scores.json:" in error and "git checkout" in error


def test_a_path_that_is_not_a_regular_file_is_refused_at_once(pristine, monkeypatch, capsys):
    monkeypatch.chdir(pristine)
    fifo = pristine / "pipe.jpg"
    os.mkfifo(fifo)
    try:
        assert cli.main([str(fifo), "/dev/zero", str(pristine)]) == 1
    finally:
        fifo.unlink()
    errors = capsys.readouterr().err.strip().splitlines()
    assert [line.split(": ")[-1] for line in errors[-3:]] == ["not a regular file"] * 3
