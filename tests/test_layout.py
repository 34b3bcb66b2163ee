"""A project folder as a value (captioner.layout): every path under its root, whatever the working directory."""

import shutil
import subprocess
import sys
from pathlib import Path

from captioner.layout import Layout


def test_every_path_is_under_the_root_and_path_params_are_the_project_folders(tmp_path):
    layout = Layout(tmp_path / "project")
    assert layout.root == tmp_path / "project"
    assert all(path.is_relative_to(layout.root) for path in (layout.vocab, layout.model, *layout.output_roots))
    assert layout.members(["a"]) == [layout.root / "ensemble" / "a"]
    assert layout.training_outputs("a").model == layout.root / "ensemble" / "a"
    assert layout.located("../shared/f.zip") == str(layout.root / "../shared/f.zip")
    assert layout.located(["x.zip", "/abs/y.zip"]) == [str(layout.root / "x.zip"), "/abs/y.zip"]
    for unchanged in ("https://example.org/f.zip", "file:///data/f.zip", None, ""):
        assert layout.located(unchanged) == unchanged
    assert Layout().vocab == Path("data/vocab.json")  # the working directory's, as users type paths


def test_a_stage_run_from_another_working_directory_reads_and_writes_its_own_project(project, shapes_raw, tmp_path):
    shutil.copytree(shapes_raw, project / "data" / "raw")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for stage in ("clean_captions", "build_vocab"):
        command = [sys.executable, str(project / "stages" / f"{stage}.py")]
        run = subprocess.run(command, cwd=elsewhere, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
    assert (project / "data" / "vocab.json").is_file() and list(elsewhere.iterdir()) == []
