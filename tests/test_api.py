"""The Python API (``captioner.Captioner``, ``train``, ``train_config``): the README's example runs as written, and
bad input gives the stages' one-line errors."""

import math
import re
import shutil
import subprocess
import sys

import pytest

from captioner import CaptionerError
from tests.conftest import PROJECT
from tests.tiny_pipeline import tf_noise


def readme_example() -> str:
    (block,) = re.findall(r"```python\n(.*?)```", (PROJECT / "README.md").read_text(), re.DOTALL)
    return block


@pytest.mark.e2e
def test_the_readme_example_runs_as_written_from_the_project_root_in_a_fresh_process(tiny):
    shutil.copy(next((tiny / "data" / "raw" / "Flicker8k_Dataset").iterdir()), tiny / "photo.jpg")
    result = subprocess.run([sys.executable, "-c", readme_example()], cwd=tiny, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not tf_noise(result.stderr), result.stderr  # the API readied the process before TensorFlow started
    lines = result.stdout.splitlines()
    (photo,), (missing,) = ([line for line in lines if line.startswith(name)] for name in ("photo", "missing"))
    trained = lines[-1]  # after training's own lines
    assert re.fullmatch(r"photo\.jpg [a-z ]+ -\d+\.\d+", photo), photo
    assert missing == "missing.jpg no such file nan"
    assert re.fullmatch(r"[12] [a-z ]+", trained), trained
    assert (tiny / "runs" / "short" / "models" / "captioner.keras").is_file()
    assert (tiny / "runs" / "short" / "metrics" / "train" / "metrics.json").is_file()


def test_a_missing_model_folder_and_a_bad_param_are_one_line_errors(tmp_path):
    from captioner import Captioner, train_config

    with pytest.raises(CaptionerError) as missing:
        Captioner.load(tmp_path / "nowhere")
    assert "\n" not in str(missing.value) and "nowhere" in str(missing.value)
    shutil.copy(PROJECT / "dvc.yaml", tmp_path)
    (tmp_path / "params.yaml").write_text((PROJECT / "params.yaml").read_text().replace("units: 512", "units: 0"))
    with pytest.raises(CaptionerError, match="decoder.units is 0"):
        train_config(tmp_path)


@pytest.mark.e2e
def test_one_unreadable_image_in_a_list_fails_alone_and_the_others_are_captioned_in_order(tiny_trained, tmp_path):
    from captioner import Captioner

    images = sorted((tiny_trained / "data" / "raw" / "Flicker8k_Dataset").iterdir())[:2]
    (tmp_path / "corrupt.jpg").write_bytes(images[0].read_bytes()[:200])
    results = Captioner.load(tiny_trained / "models").caption([images[0], tmp_path / "corrupt.jpg", images[1]])
    assert [result.image for result in results] == [images[0], tmp_path / "corrupt.jpg", images[1]]
    assert results[1].error == "not a readable image" and results[1].text == "" and math.isnan(results[1].log_prob)
    assert all(result.error is None and result.text and result.log_prob < 0 for result in results[::2])
