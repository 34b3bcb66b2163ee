"""Stage clean_captions: cleaned, start/end-wrapped captions, one file per split."""

import sys

from captioner.datasets import clean_release, write_captions
from captioner.files import atomic_path
from captioner.layout import SPLITS, Layout
from captioner.stage import Params, run


def main(params: Params, layout: Layout) -> None:
    release = clean_release(layout.raw)
    for warning in release.warnings:
        print(f"clean_captions: warning: {warning}")
    with atomic_path(layout.captions) as folder:  # the three splits replace the last run's together
        folder.mkdir()
        for split in SPLITS:
            write_captions(folder / layout.split_captions(split).name, release.captions[split])
    kept = ", ".join(f"{split} {len(release.captions[split])}" for split in SPLITS)
    dropped = ", ".join(f"{count} {reason}" for reason, count in sorted(release.skipped.items())) or "none"
    print(f"clean_captions: kept {kept}; skipped {dropped}")


if __name__ == "__main__":
    sys.exit(run(main))
