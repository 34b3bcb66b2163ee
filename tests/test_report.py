"""caption-diff and caption-exps (captioner.report): what reviewers read."""

import json
import subprocess

import numpy as np

from captioner import report
from captioner.evaluation import metrics
from captioner.evaluation.evaluate import Evaluation, captions_table

HEADER_ONLY = "| Path   | Metric   | main   | workspace   | Change   |\n|--------|----------|--------|---|---|\n"
SCORES = HEADER_ONLY + "| metrics/scores.json | bleu4 | 0.6 | 0.61 | 0.01 |\n"
PARAMS = "| Path | Param | main | workspace |\n|---|---|---|---|\n| params.yaml | decoder.units | 256 | 512 |\n"


def test_scores_come_first_then_training_then_params_and_an_unchanged_side_says_so(monkeypatch, tmp_path):
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        output = PARAMS if command[1] == "params" else SCORES if report.SCORES in command else HEADER_ONLY
        return subprocess.CompletedProcess(command, 0, output, "")

    monkeypatch.setattr(report.subprocess, "run", fake_run)
    text = report.diff_report("main", tmp_path / "no_test_captions.tsv")
    assert text.index("## Test scores") < text.index("| bleu4 |") < text.index("## Training") < text.index("## Params")
    assert "## Training: `main` → this change\n\nNo training summary value changed." in text
    assert "| params.yaml | decoder.units | 256 | 512 |" in text
    assert calls == [
        ["dvc", "metrics", "diff", "--md", "--precision", "4", "--targets", "metrics/scores.json", "--", "main"],
        ["dvc", "metrics", "diff", "--md", "--precision", "4", "--targets", "metrics/train/metrics.json", "--", "main"],
        ["dvc", "params", "diff", "--md", "main"],
    ]


def _revision(name, units, bleu4, url="https://example.invalid/a/very/long/path/to/Flickr8k_Dataset.zip"):
    """One revision as `dvc exp show --json` gives it (the parts caption-exps reads)."""
    params = {"decoder": {"units": units, "rnn": "gru"}, "flickr8k": {"images_url": url}}
    return {
        "rev": "0123456789abcdef",
        "name": name,
        "data": {
            "params": {"params.yaml": {"data": params}},
            "metrics": {"metrics/scores.json": {"data": {"bleu4": bleu4, "cider": 2.5, "rouge_l": 0.7}}},
            "deps": {"data/features/efficientnet_lite0.h5": {"hash": "abc"}},
        },
    }


def test_the_experiments_table_shows_changed_params_and_headline_scores_only():
    show = [
        {**_revision(None, 16, 0.5012), "rev": "workspace"},
        {**_revision("main", 16, 0.5012), "experiments": [{"revs": [_revision("wide-units", 24, 0.55)]}]},
    ]
    lines = report.experiments_table(show).splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == ["Experiment", "decoder.units", "bleu4", "cider", "meteor", "rouge_l"]
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["workspace", "main", "wide-units"]
    assert "| 24 " in lines[4] and "0.55" in lines[4] and max(map(len, lines)) <= 120


def _table(images, references, hypotheses) -> str:
    """The captions table as the evaluate stage writes it."""
    return captions_table(Evaluation(images, references, hypotheses, forced=None, attended=[]))


def _noise(monkeypatch, tmp_path, ours: str, base: str | None) -> str:
    """``bleu4_noise`` with ``ours`` in the workspace and ``base`` at revision main (None: main has no table)."""

    def fake_git_show(command, **kwargs):
        assert command == ["git", "show", "main:" + (tmp_path / "captions.tsv").as_posix()]
        return subprocess.CompletedProcess(command, 0 if base is not None else 128, base or "", "")

    monkeypatch.setattr(report.subprocess, "run", fake_git_show)
    (tmp_path / "captions.tsv").write_text(ours)
    return report.bleu4_noise("main", tmp_path / "captions.tsv")


def test_the_bleu4_change_is_weighed_against_a_paired_bootstrap_of_the_same_test_images(monkeypatch, tmp_path):
    rng = np.random.default_rng(0)
    words = "a red blue square circle triangle small large left right and".split()
    images = [f"shape_{i}.png" for i in range(40)]
    references = [[list(rng.choice(words, 8)) for _ in range(3)] for _ in images]
    before = [refs[0][:6] + ["and"] for refs in references]
    slightly = [refs[0][:5] + ["and", "and"] if i % 10 == 0 else caption for i, (refs, caption) in
                enumerate(zip(references, before, strict=True))]  # fmt: skip
    much = [refs[0] for refs in references]  # every caption a reference: BLEU-4 1
    base = _table(images, references, before)
    assert report.read_test_captions(base)[images[3]] == (references[3], before[3])  # the stage's table, read back
    scored = [round(metrics.corpus_bleu(references, captions)["bleu4"], 4) for captions in (before, slightly)]
    change = scored[1] - scored[0]  # as `dvc metrics diff` shows it: between the rounded scores
    small = _noise(monkeypatch, tmp_path, _table(images, references, slightly), base)
    assert small.startswith(f"BLEU-4 {change:+.4f} on the same 40 test images") and change < 0
    assert small.endswith(": within what the choice of test images moves.")
    large = _noise(monkeypatch, tmp_path, _table(images, references, much), base)
    assert large.endswith(": beyond what the choice of test images moves.")
    assert _noise(monkeypatch, tmp_path, base, base) == ""  # the same captions: nothing to weigh
    # Other test images at main (or none there): this change's own interval, around its BLEU-4.
    for other in (_table(images[1:], references[1:], before[1:]), None):
        alone = _noise(monkeypatch, tmp_path, _table(images, references, slightly), other)
        low, high = (float(value) for value in alone.removesuffix(".").split("score ")[1].split("–"))
        assert (
            alone.startswith("BLEU-4 on 40 test images")
            and low < metrics.corpus_bleu(references, slightly)["bleu4"] < high
        )


def test_a_captions_table_without_its_columns_is_one_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    report.TEST_CAPTIONS.parent.mkdir()
    report.TEST_CAPTIONS.write_text("image\tcaption\nx.png\ta cat\n")
    monkeypatch.setattr(report.subprocess, "run", lambda command, **_: subprocess.CompletedProcess(command, 0, "", ""))
    assert report.diff_main(["main"]) == 1
    error = capsys.readouterr().err
    assert error == "caption-diff: error: metrics/test_captions.tsv has no image, generated and references columns\n"


def test_the_experiments_table_folds_the_data_source_and_stays_within_120_characters_for_any_experiments():
    local = "../shared/flickr8k/Flickr8k_Dataset.zip"
    show = [{**_revision("main", 16, 0.5), "experiments": [{"revs": [_revision("flickr8k-run", 512, 0.2, local)]}]}]
    show[0]["experiments"][0]["revs"][0]["data"]["params"]["params.yaml"]["data"]["dataset"] = "flickr8k"
    lines = report.experiments_table(show).splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == ["Experiment", "dataset", "decoder.units", "source", "bleu4", "cider", "meteor", "rouge_l"]
    assert lines[3].split("|")[4].strip().startswith("Flickr8k_Dataset.zip·") and "../shared" not in lines[3]
    assert max(map(len, lines)) <= 120
    many = {f"knob_{i}": i for i in range(12)}  # more params differ than columns fit
    revision = _revision("many", 24, 0.4)
    revision["data"]["params"]["params.yaml"]["data"]["train"] = many
    show = [{**_revision("main", 16, 0.5), "experiments": [{"revs": [revision]}]}]
    lines = report.experiments_table(show).splitlines()
    assert [cell.strip() for cell in lines[0].strip("|").split("|")][:2] == ["Experiment", "changed"]
    assert "decoder.units=24, train.knob_0=0" in lines[3] and lines[3].split("|")[2].strip().endswith("…")
    assert max(map(len, lines)) <= 120 and len({len(line) for line in lines}) == 1


def test_caption_exps_asks_dvc_for_every_commits_experiments_with_a(monkeypatch, capsys):
    asked = []

    def fake_dvc(*args):
        asked.append(args)
        return json.dumps([_revision("main", 16, 0.5)])

    monkeypatch.setattr(report, "_dvc", fake_dvc)
    monkeypatch.setattr(report, "check_scores", lambda: None)
    assert report.experiments_main(["-A"]) == 0 and report.experiments_main([]) == 0
    assert asked == [("exp", "show", "--json", "--no-fetch", "--all-commits"), ("exp", "show", "--json", "--no-fetch")]
    assert capsys.readouterr().out.startswith("| Experiment |")
