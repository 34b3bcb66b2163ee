"""The caption command's arguments (captioner.cli); captioning itself is tested end to end in test_pipeline."""

import pytest

from captioner.cli import main


@pytest.mark.parametrize(("flag", "value"), [("--beam", "0"), ("--beam", "-2"), ("--max-len", "many")])
def test_a_width_or_length_below_one_is_a_usage_error_before_any_model_loads(capsys, flag, value):
    with pytest.raises(SystemExit) as exit_status:
        main(["photo.jpg", flag, value])
    assert exit_status.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"caption: error: argument {flag}: must be a whole number ≥ 1, not {value!r}"
    )
