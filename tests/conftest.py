import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from captioner.datasets import shapes

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
    for name in PROJECT_FILES:
        source = PROJECT / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, tmp_path / name)
    return tmp_path


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
