"""Datasets in the Flickr8k release layout, whatever their source, and their cleaned captions.

The layout (see ``captioner.layout.Release``): an image folder, ``Flickr8k.token.txt`` with
``<image>#<n>\\t<caption>`` lines, and one ``Flickr_8k.<split>Images.txt`` list per split.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from captioner import CaptionerError, text
from captioner.boundary import confine
from captioner.files import text_lines
from captioner.layout import SPLITS, Release

DATASETS = ("shapes", "flickr8k", "karpathy")


def read_split_list(path: Path) -> list[str]:
    """The image names a split list beside the image folder holds, each confined to that folder."""
    if not path.exists():
        raise CaptionerError(f"split list {path} is missing")
    images = path.parent / Release.images
    names = []
    for number, line in enumerate(text_lines(path), start=1):
        if line.strip():
            names.append(confine(images, line.strip(), f"{path}:{number}: image").name)
    return names


def parse_caption_line(line: str) -> tuple[str, str]:
    """``(image, caption)`` from a ``<image>#<n>\\t<caption>`` line; ValueError if it is not one."""
    caption_id, separator, caption = line.partition("\t")
    image, hash_sign, number = caption_id.rpartition("#")
    if not separator or not hash_sign or not image or not number.isdigit():
        raise ValueError(f"malformed caption line: {line[:80]!r}")
    return image, caption


SHOWN = 3  # image names quoted in a warning before "…"


@dataclass
class CleanedRelease:
    """Cleaned, start/end-wrapped captions per split, with counts of what was skipped and why, and warnings."""

    captions: dict[str, list[tuple[str, list[str]]]]
    skipped: Counter[str]
    warnings: list[str]


def _named(images: list[str]) -> str:
    return ", ".join(images[:SHOWN]) + (", …" if len(images) > SHOWN else "")


def _split_of_images(raw: Path, present: set[str], warnings: list[str]) -> dict[str, str]:
    """Each listed image's split. An image listed in two splits stays in the later of train, dev, test (so a
    test image never trains); a listed image without a file is named. Both are warnings."""
    split_of: dict[str, str] = {}
    for split in SPLITS:
        listed = read_split_list(raw / Release.split_list(split))
        moved = sorted({image for image in listed if split_of.get(image, split) != split})
        if moved:
            earlier = sorted({split_of[image] for image in moved})
            also = " and ".join(earlier)
            warnings.append(f"{len(moved)} {split} images are listed in {also} too; kept in {split}: {_named(moved)}")
        missing = sorted({image for image in listed if image not in present})
        if missing:
            warnings.append(f"{len(missing)} {split} images have no file: {_named(missing)}")
        split_of |= dict.fromkeys(listed, split)
    return split_of


def clean_release(raw: Path) -> CleanedRelease:
    """Cleaned, start/end-wrapped captions per split, what was skipped, and warnings about the split lists.

    Dirty lines are skipped, not fatal: a caption whose image file is missing (the real release has one:
    ``2258277193_586949ec62.jpg.1``), one with no words left after cleaning, one whose words repeat an earlier caption
    of its image (the real release has 18), a line that is not ``<image>#<n>\\t<caption>``. Captions of images in no
    split are left out silently. A split left with no caption is a CaptionerError: nothing trains or scores on it.
    """
    images = raw / Release.images
    captions_file = raw / Release.captions_file
    if not captions_file.exists():
        raise CaptionerError(f"caption file {captions_file} is missing")
    present = {entry.name for entry in os.scandir(images) if entry.is_file()} if images.is_dir() else set()
    warnings: list[str] = []
    split_of = _split_of_images(raw, present, warnings)
    cleaned: dict[str, list[tuple[str, list[str]]]] = {split: [] for split in SPLITS}
    skipped: Counter[str] = Counter()
    seen: set[tuple[str, ...]] = set()  # (image, *words) of each caption kept: a second one says nothing new
    for number, line in enumerate(text_lines(captions_file), start=1):
        if not line.strip():
            continue
        try:
            image, caption = parse_caption_line(line)
        except ValueError:
            skipped["malformed"] += 1
            continue
        if image not in split_of:  # a listed image passed the rule when its split list was read
            confine(images, image, f"{captions_file}:{number}: image")
        if image not in present:
            skipped["missing image"] += 1
            continue
        if image not in split_of:
            continue
        words = text.clean(caption)
        if not words:
            skipped["empty"] += 1
            continue
        if (image, *words) in seen:
            skipped["duplicate"] += 1
            continue
        seen.add((image, *words))
        cleaned[split_of[image]].append((image, text.wrap(words)))
    for split, pairs in cleaned.items():
        if not pairs:
            listed = sum(1 for kept_in in split_of.values() if kept_in == split)
            raise CaptionerError(
                f"the {split} split has no usable captions ({listed} images listed in {Release.split_list(split)}"
                f", {sum(skipped.values())} caption lines skipped); every split needs some"
            )
    return CleanedRelease(cleaned, skipped, warnings)


def split_references(
    captions: list[tuple[str, list[str]]], row_of: dict[str, int]
) -> tuple[list[str], np.ndarray, list[list[list[str]]]]:
    """The images of a split's captions that have feature rows (first-seen order), those rows, and each
    image's reference captions as word lists."""
    references = text.references_by_image(captions, row_of)
    images = list(references)
    return images, np.array([row_of[image] for image in images], dtype=np.int64), list(references.values())


def write_captions(path: Path, captions: list[tuple[str, list[str]]]) -> None:
    from captioner.files import write_text

    write_text(path, "".join(f"{image}\t{' '.join(tokens)}\n" for image, tokens in captions))


def read_captions(path: Path) -> list[tuple[str, list[str]]]:
    """``(image, tokens)`` pairs from a file written by ``write_captions``."""
    if not Path(path).exists():
        raise CaptionerError(f"captions file {path} is missing; run the clean_captions stage")
    pairs = []
    for line in text_lines(path):
        image, _, caption = line.partition("\t")
        # Interned, every word and image name is held once: COCO's 600k captions take ~5x less memory.
        pairs.append((sys.intern(image), [sys.intern(word) for word in caption.split()]))
    return pairs
