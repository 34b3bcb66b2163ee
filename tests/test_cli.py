"""The caption command (captioner.cli): its arguments, and captioning files with the tiny project's model."""

import json

import pytest

from captioner.cli import main


@pytest.mark.parametrize(
    ("flag", "value", "rule"),
    [
        ("--beam", "0", "an integer ≥ 1 and ≤ 100 (as evaluate.beam_size)"),
        ("--beam", "1000000", "an integer ≥ 1 and ≤ 100 (as evaluate.beam_size)"),
        ("--max-len", "many", "an integer ≥ 1 and ≤ 1000 (as evaluate.max_len)"),
        ("--length-penalty", "-0.5", "a finite number ≥ 0 (as evaluate.length_penalty)"),
        ("--length-penalty", "inf", "a finite number ≥ 0 (as evaluate.length_penalty)"),
        ("--length-penalty", "nan", "a finite number ≥ 0 (as evaluate.length_penalty)"),
    ],
)
def test_a_flag_outside_its_params_rule_is_a_usage_error_before_any_model_loads(capsys, flag, value, rule):
    with pytest.raises(SystemExit) as exit_status:
        main(["photo.jpg", flag, value])
    assert exit_status.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"caption: error: argument {flag}: must be {rule}, not {value!r}"
    )


@pytest.mark.parametrize(("arguments", "penalty"), [([], 0.0), (["--length-penalty", "1"], 1.0)])
def test_the_length_penalty_reaches_the_beam_search(monkeypatch, capsys, arguments, penalty):
    from captioner import captioning

    asked = {}

    class Fake:
        trained = type("Trained", (), {"card": {"dataset": "flickr8k"}})()

        def captions(self, paths, **settings):
            asked.update(settings)
            return [captioning.Caption(path, "a dog", -1.5, None) for path in paths]

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


@pytest.mark.e2e
def test_caption_captions_good_images_and_names_bad_ones_after_a_note_on_a_shapes_model(
    tiny_trained, tmp_path, capsys, monkeypatch
):
    from PIL import Image

    monkeypatch.chdir(tiny_trained)
    odd = tmp_path / "odd size.png"
    Image.new("RGB", (300, 170), (200, 30, 30)).save(odd)
    shape = next((tiny_trained / "data" / "raw" / "Flicker8k_Dataset").iterdir())
    (tmp_path / "notes.txt").write_text("not an image")
    assert main([str(shape), str(tmp_path / "notes.txt"), str(odd), str(tmp_path / "gone.jpg"), "--beam", "2"]) == 1
    printed = capsys.readouterr()
    lines = printed.out.strip().splitlines()
    assert [line.split(": ")[0] for line in lines] == [str(shape), str(odd)]
    assert all(len(line.split(": ", 1)[1].split()) >= 1 for line in lines)
    errors = printed.err.strip().splitlines()
    assert errors[0].startswith("caption: note: the model in models/ was trained on generated shapes and describes")
    assert errors[1:] == [
        f"caption: error: {tmp_path / 'notes.txt'}: not a readable image",
        f"caption: error: {tmp_path / 'gone.jpg'}: no such file",
    ]
    assert main([str(shape), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["image"] == str(shape)
