"""What reviewers read: `caption-diff [REV]` (metrics and params against REV, as Markdown) and `caption-exps`
(every experiment's changed params and headline scores, one table).

The pull-request workflow posts exactly the `caption-diff` text as a comment, so a local run shows what a
reviewer will see: the test scores first (with whether BLEU-4 moved beyond what the choice of test images moves),
then the training summary, then the params.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path, PurePosixPath

import numpy as np

from captioner import CaptionerError, artifacts

SCORES, TRAINING = "metrics/scores.json", "metrics/train/metrics.json"
TEST_CAPTIONS = Path("metrics/test_captions.tsv")  # written by captioner.evaluation.evaluate.captions_table
HEADLINE = ("bleu4", "cider", "meteor", "rouge_l")  # the scores an experiments table shows
WIDEST_VALUE = 22  # characters of a param value shown in the experiments table


def _dvc(*args: str) -> str:
    command = ["dvc", *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip().splitlines()[-1:]}")
    return result.stdout.strip()


def check_scores(path: Path = Path(SCORES)) -> None:
    """A CaptionerError naming the workspace's scores file when it exists but is not a JSON object whose headline
    scores are numbers (DVC would show them as blanks)."""
    if not path.exists():
        return
    scores = artifacts.read_json(path)
    wrong = [key for key in HEADLINE if not isinstance(scores.get(key), int | float) or isinstance(scores[key], bool)]
    if wrong:
        raise artifacts.damaged(path, f"{', '.join(wrong)} not a number")


def _changed(table: str, what: str) -> str:
    return table if len(table.splitlines()) > 2 else f"No {what} changed."  # a header alone says nothing


def read_test_captions(text: str, source: str = str(TEST_CAPTIONS)) -> dict[str, tuple[list[list[str]], list[str]]]:
    """Each test image's (references, generated caption), from the evaluate stage's captions table (``source``
    names it in the error a table without its columns raises)."""
    rows = csv.DictReader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)
    if not {"image", "generated", "references"} <= set(rows.fieldnames or ()):
        raise ValueError(f"{source} has no image, generated and references columns")
    return {
        row["image"]: ([reference.split() for reference in row["references"].split(" | ")], row["generated"].split())
        for row in rows
    }


def bleu4_noise(base: str, captions: Path = TEST_CAPTIONS) -> str:
    """How far the choice of test images alone moves BLEU-4: for the change against ``base`` when both captioned
    the same images with the same references (a paired bootstrap), else for this change's own score; empty
    without the workspace's captions table."""
    from captioner.evaluation import metrics

    if not captions.exists():
        return ""
    ours = read_test_captions(captions.read_text(), str(captions))
    shown = subprocess.run(["git", "show", f"{base}:{captions.as_posix()}"], capture_output=True, text=True)
    try:
        theirs = read_test_captions(shown.stdout, base) if shown.returncode == 0 else {}
    except ValueError:  # an older table: not comparable image by image
        theirs = {}
    images = sorted(ours)
    references, mine = [ours[image][0] for image in images], [ours[image][1] for image in images]
    if sorted(theirs) != images or any(theirs[image][0] != ours[image][0] for image in images):
        low, high = np.percentile(metrics.bleu4_bootstrap(references, [mine])[:, 0], [2.5, 97.5])
        return (
            f"BLEU-4 on {len(images)} test images; redrawn with replacement (bootstrap, 95 %), these captions "
            f"score {low:.4f}–{high:.4f}."
        )
    before = [theirs[image][1] for image in images]
    if before == mine:
        return ""  # the same captions: nothing to weigh
    # As metrics/scores.json rounds them, so the change reads as the table's above.
    bleu4 = [round(metrics.corpus_bleu(references, system)["bleu4"], 4) for system in (before, mine)]
    change = bleu4[1] - bleu4[0]
    draws = metrics.bleu4_bootstrap(references, [before, mine])
    low, high = np.percentile(draws[:, 1] - draws[:, 0], [2.5, 97.5])
    return (
        f"BLEU-4 {change:+.4f} on the same {len(images)} test images; redrawing them with replacement (paired "
        f"bootstrap, 95 %) puts the change between {low:+.4f} and {high:+.4f}: "
        f"{'within' if low <= 0 <= high else 'beyond'} what the choice of test images moves."
    )


def diff_report(base: str, captions: Path = TEST_CAPTIONS) -> str:
    """Markdown: test scores (and how far the choice of test images moves BLEU-4), training summary and params,
    each ``base`` → workspace."""
    scores = _dvc("metrics", "diff", "--md", "--precision", "4", "--targets", SCORES, "--", base)
    training = _dvc("metrics", "diff", "--md", "--precision", "4", "--targets", TRAINING, "--", base)
    params = _dvc("params", "diff", "--md", base)
    noise = bleu4_noise(base, captions)
    return "\n\n".join(
        [
            f"## Test scores: `{base}` → this change",
            _changed(scores, "test score") + (f"\n\n{noise}" if noise else ""),
            f"## Training: `{base}` → this change",
            _changed(training, "training summary value"),
            f"## Params: `{base}` → this change",
            _changed(params, "param"),
        ]
    )


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def draw_plots(base: str, folder: Path) -> list[str]:
    """``dvc plots diff <base>`` drawn into ``folder`` without a browser, for a pull request: each curve plot one
    PNG rendered from the Vega-Lite spec DVC builds (vl-convert), each image plot one copy per revision, and
    ``index.md`` showing them under their names. Returns index.md's lines; a revision whose plots DVC could
    not load (outputs neither in the cache nor pulled) is named there, not an error."""
    import vl_convert

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        shown = json.loads(_dvc("plots", "diff", base, "--json", "-o", scratch))
        lines = [f"# Plots: {base} vs the workspace", ""]
        for name, plots in shown["data"].items():
            for plot in plots:
                revisions = ", ".join(plot["revisions"])
                if plot["type"] == "vega":
                    target = folder / f"{_slug(name)}.png"
                    target.write_bytes(vl_convert.vegalite_to_png(plot["content"], scale=1.5))
                else:  # an image, one per revision
                    target = folder / f"{_slug(revisions)}-{Path(name).name}"
                    shutil.copyfile(plot["url"], target)
                lines += [f"## {name} ({revisions})", "", f"![{name}]({target.name})", ""]
    for error in shown.get("errors") or []:
        lines.append(f"Not drawn: {shown_error(error)}")
    (folder / "index.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return lines


def shown_error(error: dict) -> str:
    """One line for an entry of ``dvc plots … --json``'s errors."""
    where = " ".join(str(error.get(key)) for key in ("rev", "name", "source") if error.get(key))
    return f"{where}: {error.get('msg') or error.get('type') or error}"


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _experiments(show: list[dict]) -> list[tuple[str, dict, dict]]:
    """(name, params, scores) of the workspace, each commit and each experiment in `dvc exp show --json`."""
    rows = []

    def add(name: str, data: dict | None) -> None:
        if not data:
            return
        params = _flat(data.get("params", {}).get("params.yaml", {}).get("data", {}))
        scores = data.get("metrics", {}).get(SCORES, {}).get("data", {})
        rows.append((name, params, scores))

    for commit in show:
        add(commit.get("name") or _short(commit["rev"]), commit.get("data"))
        for experiment in commit.get("experiments") or []:
            for revision in experiment.get("revs", []):
                add(revision.get("name") or experiment.get("name") or _short(revision["rev"]), revision.get("data"))
    return rows


def _short(rev: str) -> str:
    """A commit's sha shortened as git does; ``workspace`` as it is."""
    return rev[:7] if rev != "workspace" else rev


def _cell(value) -> str:
    text = f"{value:.4f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)
    return text if len(text) <= WIDEST_VALUE else text[: WIDEST_VALUE - 1] + "…"


SOURCE = ("flickr8k.", "karpathy.")  # params that say where a dataset's files come from: URLs, checksums, folders
WIDEST_TABLE = 120  # characters of a line of the experiments table


def _source(params: dict) -> str:
    """Where the data came from, in one cell: the first download's file name and a digest of all source params."""
    source = {name: params[name] for name in sorted(params) if name.startswith(SOURCE)}
    digest = hashlib.sha256(repr(source).encode()).hexdigest()[:4]
    download = "karpathy.split_url" if params.get("dataset") == "karpathy" else "flickr8k.images_url"
    return f"{PurePosixPath(str(params.get(download) or '')).name}·{digest}"


def experiments_table(show: list[dict]) -> str:
    """A Markdown table of at most ``WIDEST_TABLE`` characters a line: one row per experiment, a column per param
    whose value differs between them (where the data came from folded into one ``source`` column), then the headline
    test scores. Too many differing params for that width: one ``changed`` column lists them, shortened."""
    rows = [(name, {"source": _source(p), **_without_source(p)}, s) for name, p, s in _experiments(show)]
    names = sorted({name for _, params, _ in rows for name in params})
    changed = [name for name in names if len({repr(params.get(name)) for _, params, _ in rows}) > 1]
    firsts = [_cell(name) for name, _, _ in rows]
    scores = [[_cell(s.get(key, "")) for key in HEADLINE] for _, _, s in rows]

    def table(middle: list[str], cells: list[list[str]]) -> str:
        body = [[first, *row, *score] for first, row, score in zip(firsts, cells, scores, strict=True)]
        return _markdown([["Experiment", *middle, *HEADLINE], *body])

    values = [[_cell(p.get(key, "")) for key in changed] for _, p, _ in rows]
    wide = table(changed, values)
    if max(map(len, wide.splitlines())) <= WIDEST_TABLE:
        return wide
    room = WIDEST_TABLE - len(table([""], [[""]] * len(rows)).splitlines()[0])
    listed = [", ".join(f"{key}={value}" for key, value in zip(changed, row, strict=True)) for row in values]
    return table(["changed"], [[text if len(text) <= room else text[: room - 1] + "…"] for text in listed])


def _without_source(params: dict) -> dict:
    return {name: value for name, value in params.items() if not name.startswith(SOURCE)}


def _markdown(lines: list[list[str]]) -> str:
    widths = [max(len(line[column]) for line in lines) for column in range(len(lines[0]))]
    lines = [lines[0], ["-" * max(width, 1) for width in widths], *lines[1:]]
    return "\n".join(
        "| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) + " |" for line in lines
    )


def diff_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="caption-diff",
        description="Test scores, training summary and params of the workspace against a git revision, as Markdown.",
    )
    parser.add_argument("base", nargs="?", default="main", help="git revision to compare with (default: main)")
    drawn = "also draw `dvc plots diff BASE` into FOLDER as PNG images, with an index.md showing them"
    parser.add_argument("--plots", type=Path, metavar="FOLDER", help=drawn)
    args = parser.parse_args(argv)
    try:
        check_scores()
        print(diff_report(args.base))
        if args.plots:
            draw_plots(args.base, args.plots)
    except (RuntimeError, FileNotFoundError, ValueError, CaptionerError) as error:
        print(f"caption-diff: error: {error}", file=sys.stderr)
        return 1
    return 0


def experiments_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="caption-exps",
        description="Every experiment (dvc exp show): the params "
        "that differ between them and the headline test scores.",
    )
    parser.add_argument("-A", "--all-commits", action="store_true", help="the experiments of every commit, not HEAD's")
    arguments = parser.parse_args(argv)
    try:
        check_scores()
        everywhere = ["--all-commits"] if arguments.all_commits else []
        print(experiments_table(json.loads(_dvc("exp", "show", "--json", "--no-fetch", *everywhere))))
    except (RuntimeError, FileNotFoundError, json.JSONDecodeError, CaptionerError) as error:
        print(f"caption-exps: error: {error}", file=sys.stderr)
        return 1
    return 0
