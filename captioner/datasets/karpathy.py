"""Karpathy-split corpora (Flickr8k, Flickr30k, COCO) rewritten into the Flickr8k release layout.

A split file (``dataset_coco.json`` and the like, from Karpathy's ``caption_datasets.zip``) lists
``images``, each with a ``filename``, a ``filepath`` under the images root (COCO's ``train2014`` /
``val2014``; absent for the Flickr corpora), a ``split`` (train, val, test, restval) and ``sentences``
with the ``raw`` caption. The download stage writes them as the release layout, so every later stage
runs the same code for every source: images linked (or copied) into one folder, captions into the
token file, train (+ restval when asked) / val / test into the train / dev / test lists.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path, PurePosixPath

from captioner import CaptionerError
from captioner.boundary import confine, field, shown
from captioner.datasets.flickr8k import extract, fetch, link_or_copy
from captioner.files import progress
from captioner.layout import SPLITS, Release

OUR_SPLIT = {"train": "train", "val": "dev", "test": "test"}  # restval joins train when asked


def read_split_file(path: Path, member: str) -> dict:
    """The split JSON: ``path`` itself, or its ``member`` when ``path`` is Karpathy's zip."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [name for name in archive.namelist() if PurePosixPath(name).name == member]
                if not names:
                    raise CaptionerError(f"{path} holds no {member}; set karpathy.split_file to one it holds")
                data = json.loads(archive.read(names[0]))
        else:
            data = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise CaptionerError(f"{path}: not a readable split JSON: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise CaptionerError(f"{path}: a Karpathy split file has an 'images' list; this one has none")
    return data


def _image_entry(entry, where: str) -> tuple[str, str, str, list[str]]:
    """(filename, filepath, split, raw captions) of one ``images`` entry, each of its type; a CaptionerError naming
    ``where`` (the file and entry) if one is missing or of another type."""
    if not isinstance(entry, dict):
        raise CaptionerError(f"{where} is {shown(entry)}; it must be an object with filename, split, sentences")
    filename, split = field(entry, "filename", str, where), field(entry, "split", str, where)
    filepath = field(entry, "filepath", str, where, default="")
    sentences = field(entry, "sentences", list, where)
    captions = []
    for number, sentence in enumerate(sentences):
        raw = field(sentence if isinstance(sentence, dict) else {}, "raw", str, f"{where}.sentences[{number}]")
        captions.append(" ".join(raw.split()))
    return filename, filepath, split, captions


def install_karpathy(split_file: dict, source: Path, images_root: Path, target: Path, restval: bool) -> list[str]:
    """Write the corpus of ``split_file`` (read from ``source``) as the release layout in ``target``; its images
    are ``images_root / filepath / filename``. Returns warnings: images listed without a file (left to
    clean_captions to skip), and restval images left out."""
    image_dir = target / Release.images
    image_dir.mkdir(parents=True)
    lines, lists = [], {split: [] for split in SPLITS}
    missing, left_out, seen = [], 0, {}
    for index, entry in enumerate(progress(split_file["images"], desc="download: linking images", unit="image")):
        where = f"{source}: images[{index}]"
        filename, filepath, split, captions = _image_entry(entry, where)
        if split == "restval" and not restval:
            left_out += 1
            continue
        ours = "train" if split == "restval" else OUR_SPLIT.get(split)
        if ours is None:
            raise CaptionerError(f"{where} ({filename}) has split {split!r}; expected train, val, test or restval")
        if filename in seen:
            raise CaptionerError(
                f"{where}: {filepath or '.'}/{filename} has the file name of images[{seen[filename]}] (images are "
                "stored by name): list each image once"
            )
        seen[filename] = index
        folder = confine(images_root, filepath, f"{where}: filepath", flat=False) if filepath else images_root
        image = confine(folder, filename, f"{where}: filename")
        if image.is_file():
            link_or_copy(image, image_dir / filename)
        else:
            missing.append(str(PurePosixPath(filepath) / filename))
        lists[ours].append(filename)
        lines.extend(f"{filename}#{number}\t{caption}\n" for number, caption in enumerate(captions))
    (target / Release.captions_file).write_text("".join(lines), encoding="utf-8")
    for split in SPLITS:
        (target / Release.split_list(split)).write_text("".join(f"{i}\n" for i in lists[split]))
    warnings = []
    if missing:
        shown = ", ".join(missing[:3]) + (", …" if len(missing) > 3 else "")
        warnings.append(f"{len(missing)} listed images are not under {images_root}: {shown}")
    if left_out:
        warnings.append(f"{left_out} restval images left out (karpathy.restval: false)")
    return warnings


def install(settings: dict, downloads: Path, target: Path) -> list[str]:
    """The ``karpathy`` params' corpus into ``target``: the split file and any image zips fetched (verified,
    resumed) and the zips extracted under ``images_dir`` once, then ``install_karpathy``."""
    urls, checksums = settings["image_urls"] or [], settings["image_sha256"] or []
    if len(checksums) not in (0, len(urls)):
        raise CaptionerError(f"karpathy.image_sha256 has {len(checksums)} entries for {len(urls)} image_urls")
    split_path = fetch(settings["split_url"], settings["split_sha256"], downloads)
    images_root = Path(settings["images_dir"])
    for url, checksum in zip(urls, checksums or [None] * len(urls), strict=True):
        archive = fetch(url, checksum, downloads)
        done = images_root / f".extracted-{archive.name}"
        if not done.exists():  # an interrupted extraction starts over; a finished one is not repeated
            extract(archive, images_root, lambda name: name)
            done.touch()
    if not images_root.is_dir():
        raise CaptionerError(f"karpathy.images_dir {images_root} is not a folder")
    return install_karpathy(
        read_split_file(split_path, settings["split_file"]), split_path, images_root, target, settings["restval"]
    )
