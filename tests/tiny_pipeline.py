"""Helpers of the end-to-end tests (tests/test_pipeline*.py), which run DVC in a copy of this project on tiny
params: the ``repo`` fixture (tests/conftest.py) gives each test its own copy."""

import json
import os
import re
import subprocess

TINY = {
    "shapes": {"num_images": 40, "image_size": 64, "dev_fraction": 0.2, "test_fraction": 0.2, "seed": 1},
    "features": {"batch_size": 16},
    "decoder": {"units": 16, "embedding_dim": 8},
    "train": {"epochs": 2, "batch_size": 32},
}
EVERY_STAGE = {"download", "clean_captions", "extract_features", "build_vocab", "train", "evaluate", "export"}

GIT_IDENTITY = {k: "pipeline-test" for k in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME")} | {
    k: "test@example.invalid" for k in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL")
}
ENVIRONMENT = os.environ | GIT_IDENTITY
# Lines TensorFlow's C++ side prints that captioner.process keeps off a stage's console.
TF_NOISE = ("I0000", "W0000", "E0000", "WARNING: All log messages", "cuInit", "oneDNN")


def tf_noise(console: str) -> list[str]:
    return [line for line in console.splitlines() if line.startswith(TF_NOISE)]


def run_dvc(repo, *args, environment: dict | None = None) -> subprocess.CompletedProcess:
    """``dvc *args`` in ``repo``, importing the repo's own copy of ``captioner``; it may fail."""
    return subprocess.run(
        ["dvc", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        env=ENVIRONMENT | {"PYTHONPATH": str(repo)} | (environment or {}),
    )


def dvc(repo, *args, environment: dict | None = None) -> str:
    """``dvc *args`` in ``repo``, which must succeed with a quiet console: its stdout and stderr."""
    result = run_dvc(repo, *args, environment=environment)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    console = result.stdout + result.stderr
    assert not tf_noise(console), f"dvc {' '.join(args)} printed TensorFlow noise: {tf_noise(console)}"
    return console


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([\w@-]+)'", output))


def commit_all(repo, message: str) -> None:
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", message], cwd=repo, check=True, env=ENVIRONMENT)


def tracked_changes(repo) -> str:
    return subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout


def assert_selected_by_dev_bleu4(repo) -> None:
    summary = json.loads((repo / "metrics" / "train" / "metrics.json").read_text())
    logged = (repo / "metrics" / "train" / "plots" / "metrics" / "by_epoch" / "dev_bleu4.tsv").read_text().splitlines()
    scores = [float(line.split("\t")[1]) for line in logged[1:]]
    assert len(scores) == summary["epochs_run"] and summary["best_dev_bleu4"] == max(scores)
    assert scores[summary["best_epoch"] - 1] == max(scores)
