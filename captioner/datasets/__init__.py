"""Datasets in the Flickr8k release layout, whatever their source, and their cleaned captions.

The layout (see ``captioner.stage.Layout``): an image folder, ``Flickr8k.token.txt`` with
``<image>#<n>\\t<caption>`` lines, and one ``Flickr_8k.<split>Images.txt`` list per split.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from captioner import text
from captioner.stage import SPLITS, Layout, StageError

DATASETS = ("shapes", "flickr8k")


def read_split_list(path: Path) -> list[str]:
    if not path.exists():
        raise StageError(f"split list {path} is missing")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def parse_caption_line(line: str) -> tuple[str, str]:
    """``(image, caption)`` from a ``<image>#<n>\\t<caption>`` line; ValueError if it is not one."""
    caption_id, separator, caption = line.partition("\t")
    image, hash_sign, number = caption_id.partition("#")
    if not separator or not hash_sign or not image or not number.isdigit():
        raise ValueError(f"malformed caption line: {line[:80]!r}")
    return image, caption


def clean_release(raw: Path) -> tuple[dict[str, list[tuple[str, list[str]]]], Counter[str]]:
    """Cleaned, start/end-wrapped captions per split, and counts of what was skipped and why.

    Dirty lines are skipped, not fatal: a caption whose image file is missing (the real release
    has one: ``2258277193_586949ec62.jpg.1``), one with no words left after cleaning, and a line
    that is not ``<image>#<n>\\t<caption>``. Captions of images in no split are left out silently.
    """
    images = raw / Layout.images.relative_to(Layout.raw)
    captions_file = raw / Layout.captions_file.relative_to(Layout.raw)
    if not captions_file.exists():
        raise StageError(f"caption file {captions_file} is missing")
    split_of = {}
    for split in SPLITS:
        for image in read_split_list(raw / Layout.split_list(split).relative_to(Layout.raw)):
            split_of[image] = split
    present = {path.name for path in images.iterdir()} if images.is_dir() else set()
    cleaned: dict[str, list[tuple[str, list[str]]]] = {split: [] for split in SPLITS}
    skipped: Counter[str] = Counter()
    with open(captions_file, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            try:
                image, caption = parse_caption_line(line)
            except ValueError:
                skipped["malformed"] += 1
                continue
            if image not in present:
                skipped["missing image"] += 1
                continue
            if image not in split_of:
                continue
            words = text.clean(caption)
            if not words:
                skipped["empty"] += 1
                continue
            cleaned[split_of[image]].append((image, text.wrap(words)))
    return cleaned, skipped


def write_captions(path: Path, captions: list[tuple[str, list[str]]]) -> None:
    from captioner.stage import write_text

    write_text(path, "".join(f"{image}\t{' '.join(tokens)}\n" for image, tokens in captions))


def read_captions(path: Path) -> list[tuple[str, list[str]]]:
    """``(image, tokens)`` pairs from a file written by ``write_captions``."""
    if not Path(path).exists():
        raise StageError(f"captions file {path} is missing; run the clean_captions stage")
    pairs = []
    for line in Path(path).read_text().splitlines():
        image, _, caption = line.partition("\t")
        pairs.append((image, caption.split()))
    return pairs
