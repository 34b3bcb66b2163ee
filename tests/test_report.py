"""caption-diff and caption-exps (captioner.report): what reviewers read."""

import subprocess

from captioner import report

HEADER_ONLY = "| Path   | Metric   | main   | workspace   | Change   |\n|--------|----------|--------|---|---|\n"
SCORES = HEADER_ONLY + "| metrics/scores.json | bleu4 | 0.6 | 0.61 | 0.01 |\n"
PARAMS = "| Path | Param | main | workspace |\n|---|---|---|---|\n| params.yaml | decoder.units | 256 | 512 |\n"


def test_scores_come_first_then_training_then_params_and_an_unchanged_side_says_so(monkeypatch):
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        output = PARAMS if command[1] == "params" else SCORES if report.SCORES in command else HEADER_ONLY
        return subprocess.CompletedProcess(command, 0, output, "")

    monkeypatch.setattr(report.subprocess, "run", fake_run)
    text = report.diff_report("main")
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
