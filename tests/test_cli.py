"""The caption command's arguments (captioner.cli); captioning itself is tested end to end in test_pipeline.py."""

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


@pytest.mark.parametrize("value", ["-0.5", "nan", "short"])
def test_a_negative_or_unreadable_length_penalty_is_a_usage_error(capsys, value):
    with pytest.raises(SystemExit) as exit_status:
        main(["photo.jpg", "--length-penalty", value])
    assert exit_status.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"caption: error: argument --length-penalty: must be a number ≥ 0, not {value!r}"
    )


@pytest.mark.parametrize(("arguments", "penalty"), [([], 0.0), (["--length-penalty", "1"], 1.0)])
def test_the_length_penalty_reaches_the_beam_search(monkeypatch, capsys, arguments, penalty):
    from captioner import captioning

    asked = {}

    class Fake:
        trained = type("Trained", (), {"card": {"dataset": "flickr8k"}})()

        def caption(self, paths, **settings):
            asked.update(settings)
            return {path: "a dog" for path in paths}, {}

    monkeypatch.setattr(captioning.Captioner, "load", classmethod(lambda cls, *_: Fake()))
    assert main(["photo.jpg", "--beam", "2", *arguments]) == 0
    assert asked == {"beam_size": 2, "max_len": None, "length_penalty": penalty}
    assert capsys.readouterr().out == "photo.jpg: a dog\n"


BAKED_IN = [["--beam", "2"], ["--max-len", "9"], ["--length-penalty", "0"], ["--member", "ensemble/x"]]


@pytest.mark.parametrize("option", BAKED_IN)
def test_decoding_options_with_an_exported_model_are_a_usage_error(capsys, option):
    with pytest.raises(SystemExit) as exit_info:
        main(["photo.jpg", "--export", "export", *option])
    assert exit_info.value.code == 2
    assert "are fixed in an exported model" in capsys.readouterr().err
