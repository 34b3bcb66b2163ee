"""Stage clean_captions: cleaned, start/end-wrapped captions, one file per split."""

from captioner.datasets import clean_release, write_captions
from captioner.stage import SPLITS, Layout, Params, run


def main(params: Params) -> None:
    cleaned, skipped = clean_release(Layout.raw)
    for split in SPLITS:
        write_captions(Layout.split_captions(split), cleaned[split])
    kept = ", ".join(f"{split} {len(cleaned[split])}" for split in SPLITS)
    dropped = ", ".join(f"{count} {reason}" for reason, count in sorted(skipped.items())) or "none"
    print(f"clean_captions: kept {kept}; skipped {dropped}")


if __name__ == "__main__":
    run(main)
