import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from captioner.datasets import shapes
from captioner.stage import PARAMS_READ
from tests.tiny_pipeline import ENVIRONMENT, TINY, commit_all, dvc

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


def run_stage(project: Path, stage: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, f"stages/{stage}.py"],
        cwd=project,
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONPATH": str(project)},
    )


@pytest.fixture
def shared_flickr8k() -> Path:
    """../shared/flickr8k; required where CAPTIONER_REQUIRE_SHARED is set (CI), skipped elsewhere."""
    if not (SHARED_FLICKR8K / "Flickr8k_text.zip").exists():
        if os.environ.get("CAPTIONER_REQUIRE_SHARED"):
            pytest.fail(f"{SHARED_FLICKR8K} is missing")
        pytest.skip(f"{SHARED_FLICKR8K} is not beside this clone")
    return SHARED_FLICKR8K


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> tuple[Path, str]:
    """A git + DVC repo of the project on the ``TINY`` params, committed after one ``dvc repro``: (its path, that
    repro's output). One per test module, whose tests change it in turn."""
    repo = tmp_path_factory.mktemp("pipeline")
    copy_project(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copy(PROJECT / ".gitignore", repo / ".gitignore")  # data, models and logs stay out of git
    for command in (["git", "init", "-q", "-b", "main"], ["dvc", "init", "-q"]):
        subprocess.run(command, cwd=repo, check=True)
    shutil.copy(PROJECT / ".dvc" / "config", repo / ".dvc" / "config")  # its remote: a folder beside the repo
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", "tiny"], cwd=repo, check=True, env=ENVIRONMENT)
    first = dvc(repo, "repro", environment={PARAMS_READ: str(repo / ".git" / "params-read")})
    commit_all(repo, "tiny, reproduced")
    return repo, first
