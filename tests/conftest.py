import contextlib
import io
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from captioner import process
from captioner.datasets import shapes
from captioner.stage import PARAMS_READ
from captioner.text import Vocabulary, wrap
from captioner.training.config import TrainConfig
from tests.tiny_pipeline import ENVIRONMENT, TINY, commit_all, dvc

# As every stage, before a test module starts TensorFlow: what runs in the test processes computes the stages' bits.
process.prepare()

PROJECT = Path(__file__).resolve().parent.parent
SHARED_FLICKR8K = PROJECT.parent / "shared" / "flickr8k"
PROJECT_FILES = ("dvc.yaml", "params.yaml", "stages", "captioner", "ensemble")


@pytest.fixture(scope="session")
def shapes_raw(tmp_path_factory) -> Path:
    """A small generated dataset in the release layout (read-only for tests)."""
    raw = tmp_path_factory.mktemp("shapes") / "raw"
    shapes.generate(raw, num_images=24, image_size=96, dev_fraction=0.25, test_fraction=0.25, seed=3)
    return raw


@pytest.fixture
def project(tmp_path) -> Path:
    """A copy of the project's pipeline files, to run stage scripts against."""
    copy_project(tmp_path)
    return tmp_path


def copy_project(target: Path) -> None:
    """The project's pipeline files (``PROJECT_FILES``) into ``target``, without bytecode caches."""
    for name in PROJECT_FILES:
        source = PROJECT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, target / name)


def run_stage(project: Path, stage: str, *argv: str) -> subprocess.CompletedProcess:
    """``python stages/<stage>.py *argv`` as DVC runs it (from the project folder), in this process: its exit
    status, stdout and stderr."""
    stdout, stderr, saved = io.StringIO(), io.StringIO(), (os.getcwd(), sys.argv)
    script = project / "stages" / f"{stage}.py"
    try:
        os.chdir(project)
        sys.argv = [str(script), *argv]
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            runpy.run_path(str(script), run_name="__main__")
        status = 0
    except SystemExit as exit:
        status = exit.code
    finally:
        os.chdir(saved[0])
        sys.argv = saved[1]
    return subprocess.CompletedProcess(sys.argv, status, stdout.getvalue(), stderr.getvalue())


@pytest.fixture
def shared_flickr8k() -> Path:
    """../shared/flickr8k; required where CAPTIONER_REQUIRE_SHARED is set (CI), skipped elsewhere."""
    if not (SHARED_FLICKR8K / "Flickr8k_text.zip").exists():
        if os.environ.get("CAPTIONER_REQUIRE_SHARED"):
            pytest.fail(f"{SHARED_FLICKR8K} is missing")
        pytest.skip(f"{SHARED_FLICKR8K} is not beside this clone")
    return SHARED_FLICKR8K


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory, worker_id) -> tuple[Path, str]:
    """A git + DVC repo of the project on the ``TINY`` params, committed after one ``dvc repro``: (its path, that
    repro's output). Made once for all test processes; tests work on copies of it (``repo``), never on it."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    shared = shared if worker_id == "master" else shared.parent  # the folder every xdist worker's temp is in
    base, first = shared / "tiny-repo" / "repo", shared / "tiny-repo" / "first-repro.txt"
    with FileLock(str(shared / "tiny-repo.lock")):
        if not first.exists():
            shutil.rmtree(base.parent, ignore_errors=True)
            base.mkdir(parents=True)
            output = make_tiny_repo(base)
            first.write_text(output)
    return base, first.read_text()


def set_params(project: Path, **sections: dict) -> None:
    """Update ``project``'s params.yaml: each section's values over its own (a top-level param: its value)."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    for section, values in sections.items():
        if isinstance(values, dict) and isinstance(params.get(section), dict) and section != "ensemble":
            params[section].update(values)
        else:
            params[section] = values
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def make_tiny_repo(repo: Path) -> str:
    """The project in ``repo`` on the ``TINY`` params, in git, reproduced and committed; the repro's output."""
    copy_project(repo)
    set_params(repo, **TINY)
    shutil.copy(PROJECT / ".gitignore", repo / ".gitignore")  # data, models and logs stay out of git
    for command in (["git", "init", "-q", "-b", "main"], ["dvc", "init", "-q"]):
        subprocess.run(command, cwd=repo, check=True)
    shutil.copy(PROJECT / ".dvc" / "config", repo / ".dvc" / "config")  # its remote: a folder beside the repo
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", "tiny"], cwd=repo, check=True, env=ENVIRONMENT)
    first = dvc(repo, "repro", environment={PARAMS_READ: str(repo / ".git" / "params-read")})
    commit_all(repo, "tiny, reproduced")
    return first


@pytest.fixture
def repo(tiny_repo, tmp_path) -> tuple[Path, str]:
    """This test's own copy of the reproduced tiny repo (``tiny_repo``), alone in its folder (its DVC remote goes
    beside it): (its path, the first repro's output). No test sees another's changes."""
    base, first = tiny_repo
    copy = tmp_path / "work" / "repo"
    shutil.copytree(base, copy, symlinks=True)
    return copy, first


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory) -> Path:
    """The project on the ``TINY`` params with its stages up to ``train`` run in this process, as ``dvc repro``
    would run them (no git, no DVC): raw data, captions, features, vocabulary and a trained model. Read-only: a test
    that writes takes a copy (``tiny``)."""
    root = tmp_path_factory.mktemp("tiny-project")
    copy_project(root)
    set_params(root, **TINY)
    for stage in ("download", "clean_captions", "extract_features", "build_vocab", "train"):
        result = run_stage(root, stage)
        assert result.returncode == 0, f"{stage}: {result.stderr}"
    return root


@pytest.fixture
def tiny(tiny_trained, tmp_path) -> Path:
    """This test's own copy of ``tiny_trained``."""
    copy = tmp_path / "project"
    shutil.copytree(tiny_trained, copy, symlinks=True)
    return copy


def run_stages(project: Path, *stages: str) -> str:
    """Run ``stages`` (``train --member NAME`` for a member) in this process, each of which must succeed; their
    stdout."""
    output = ""
    for stage in stages:
        name, *argv = stage.split()
        result = run_stage(project, name, *argv)
        assert result.returncode == 0, f"{stage}: {result.stderr[-3000:]}"
        output += result.stdout
    return output


# Toy decoders: what the unit tests of training, decoding, ensembles and self-critical training share. TensorFlow's
# side of the library is imported where it is used, so the process pytest-xdist coordinates from never starts it.


def toy_problem(num_images=16, grid=4, channels=8, seed=0):
    """Each image's caption names the channel that peaks in its grid: learnable from the features alone."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(num_images, grid, channels)).astype(np.float32)
    words = [f"w{i}" for i in range(channels)]
    peak = [int(np.argmax(features[i].mean(axis=0))) for i in range(num_images)]
    captions = [(f"{i}.jpg", wrap(["the", words[peak[i]], "thing"])) for i in range(num_images)]
    vocab = Vocabulary.build([tokens for _, tokens in captions], min_count=1, max_length=10)
    return features, captions, vocab


def toy_batches(features, captions, vocab, arch, shuffle_seed=0, reverse_rows=False):
    from captioner.training import batching

    rows, sequences, _ = batching.encode_captions(captions, {f"{i}.jpg": i for i in range(len(features))}, vocab)
    if reverse_rows:
        rows = rows[::-1].copy()
    table = features if arch == "attention" else features.mean(axis=1)
    return batching.CaptionBatches(table.__getitem__, table.shape[1:], rows, sequences, batch_size=8, seed=shuffle_seed)


def toy_spec(arch, rnn="gru", dropout=0.0):
    """A small decoder of ``arch`` (a transformer: 2 blocks of 4 heads)."""
    from captioner.model.spec import DecoderSpec

    return DecoderSpec(rnn, arch, units=32, embedding_dim=16, dropout=dropout, attention_units=16, heads=4, ff_units=64)


def toy_decoder(vocab, features, arch, rnn="gru", dropout=0.0):
    """A newly initialised decoder of ``arch`` for the toy ``features``, its model built."""
    from captioner.model import decoder

    architecture = decoder.architecture(toy_spec(arch, rnn, dropout), len(vocab))
    architecture.build(features.shape[1:] if arch == "attention" else features.shape[2:])
    return architecture


# What a toy run sets its own way; every other setting is the declared default (captioner.params).
TOY_TRAINING = {
    "encoder": "toy",
    "attention_reg": 0.0,
    "batch_size": 8,
    "epochs": 5,
    "learning_rate": 0.01,
    "patience": 5,
    "lr_patience": 0,
    "seed": 0,
    "strategy": "default",
    "self_critical_samples": 4,
}


def toy_config(arch="inject", **train) -> TrainConfig:
    """A training config for toy decoders of ``arch``; ``train`` overrides its train settings."""
    return TrainConfig(decoder=toy_spec(arch), **(TOY_TRAINING | train))


class NullLive:
    """A training log that remembers what was logged."""

    def __init__(self):
        self.logged = []

    def log_metric(self, name, value):
        self.logged.append((name, value))

    def next_step(self):
        pass

    def values(self, name):
        return [value for logged, value in self.logged if logged == name]


def teacher_forced_fit(trainer, train, dev, live=None, dev_scores=None, **settings) -> dict:
    """Teacher-forced training of ``trainer``'s model through the one epoch loop, as ``toy_config(**settings)``
    says; its summary."""
    from captioner.training import epochs
    from captioner.training.train import TeacherForcing

    phase = TeacherForcing(trainer, {"train": train, "dev": dev}, toy_config(**settings), dev_scores)
    return epochs.fit([phase], trainer, live if live is not None else NullLive())


def animated_gif(width: int, height: int, frames: int) -> bytes:
    """A GIF whose screen is ``width`` × ``height`` and whose ``frames`` frames are one pixel each (15 bytes a frame:
    a bomb when TensorFlow decodes each onto the whole screen)."""
    import struct

    frame = (
        b"\x21\xf9\x04\x00\x00\x00\x00\x00" + b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    )
    return b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0" * 6 + frame * frames + b"\x3b"
