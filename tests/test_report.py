"""caption-diff (captioner.report): the Markdown the pull-request workflow posts."""

import subprocess

from captioner import report

HEADER_ONLY = "| Path   | Metric   | main   | workspace   | Change   |\n|--------|----------|--------|---|---|\n"
PARAMS = "| Path | Param | main | workspace |\n|---|---|---|---|\n| params.yaml | decoder.units | 256 | 512 |\n"


def test_an_unchanged_side_says_so_instead_of_an_empty_table(monkeypatch):
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, 0, HEADER_ONLY if command[1] == "metrics" else PARAMS, "")

    monkeypatch.setattr(report.subprocess, "run", fake_run)
    text = report.diff_report("main")
    assert "## Metrics: `main` → this change\n\nNo metrics changed." in text
    assert "| params.yaml | decoder.units | 256 | 512 |" in text
    assert calls == [
        ["dvc", "metrics", "diff", "--md", "main", "--precision", "4"],
        ["dvc", "params", "diff", "--md", "main"],
    ]
