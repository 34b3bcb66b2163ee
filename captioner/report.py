"""`caption-diff [REV]`: the metrics and params of the workspace against REV, as Markdown.

The pull-request workflow posts exactly this text as a comment, so a local run shows what a
reviewer will see.
"""

from __future__ import annotations

import argparse
import subprocess
import sys


def _dvc_markdown(kind: str, base: str) -> str:
    command = ["dvc", kind, "diff", "--md", base]
    if kind == "metrics":
        command += ["--precision", "4"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip().splitlines()[-1:]}")
    table = result.stdout.strip()
    return table if len(table.splitlines()) > 2 else f"No {kind} changed."  # a header alone says nothing


def diff_report(base: str) -> str:
    """Markdown with a metrics table and a params table, each ``base`` → workspace."""
    return "\n\n".join(
        [
            f"## Metrics: `{base}` → this change",
            _dvc_markdown("metrics", base),
            f"## Params: `{base}` → this change",
            _dvc_markdown("params", base),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="caption-diff", description=__doc__.splitlines()[0])
    parser.add_argument("base", nargs="?", default="main", help="git revision to compare with (default: main)")
    args = parser.parse_args(argv)
    try:
        print(diff_report(args.base))
    except (RuntimeError, FileNotFoundError) as error:
        print(f"caption-diff: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
