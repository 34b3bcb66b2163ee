"""Real Flickr8k: fetch the release's two zips (URL, ``file://`` URL or local path), verify, extract safely.

Also takes a local folder in the Kaggle layout (``Images/`` + ``captions.txt``) and rewrites it
into the release layout, so every later stage runs the same code for every source.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from captioner import CaptionerError, boundary
from captioner.boundary import confine
from captioner.files import progress, sha256_of, text_lines
from captioner.layout import SPLITS, Release

IMAGES_FOLDER_IN_ZIP = "Flicker8k_Dataset"  # the release's own spelling
TEXT_FILES = (Release.captions_file, *(Release.split_list(split) for split in SPLITS))


def _local_path(url: str) -> Path | None:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if len(parsed.scheme) <= 1:  # a plain path, or one with a Windows drive letter
        return Path(url)
    return None


def _download(url: str, target: Path) -> None:
    """HTTP(S) download to ``target``, resuming a ``.part`` file left by an interrupted run."""
    partial = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    done = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={done}-"} if done else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except OSError as err:
        raise CaptionerError(f"cannot download {url}: {err}") from err
    with response:
        if done and response.status != 206:  # the server ignored the range: start over
            done = 0
        total = response.length + done if response.length is not None else None
        with (
            open(partial, "ab" if done else "wb") as out,
            progress(total=total, initial=done, unit="B", unit_scale=True, desc=f"download: {target.name}") as bar,
        ):
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
                bar.update(len(block))
    partial.replace(target)


def fetch(url: str, sha256: str | None, downloads: Path) -> Path:
    """A verified local copy of ``url``: the file itself for a path, else a (resumed) download."""
    local = _local_path(url)
    if local is not None:
        if not local.is_file():
            raise CaptionerError(f"{local} does not exist (from {url!r})")
        path = local
    else:
        path = downloads / PurePosixPath(urllib.parse.urlparse(url).path).name
        if not path.exists():
            _download(url, path)
    actual = sha256_of(path)
    if sha256 is None:
        print(f"download: warning: no sha256 given for {path.name}; it is {actual} — pin it in params.yaml")
    elif actual != sha256.lower():
        if local is None:
            path.unlink()  # a bad download must not be reused next time
        raise CaptionerError(f"{path}: sha256 {actual} does not match the expected {sha256}")
    return path


MAX_MEMBER_BYTES = 256 << 20  # an image or a split file; COCO's Karpathy split JSON, the largest, is ~150 MB


def _safe_members(archive: zipfile.ZipFile, path: Path, target: Path) -> list[zipfile.ZipInfo]:
    """The files of ``archive`` worth extracting (no folders, no ``__MACOSX`` clutter), each confined to
    ``target``, none over ``MAX_MEMBER_BYTES`` and all of them within the disk's free space: checked before anything
    is written. (Extraction stops at each member's stated size, so the statement is what it costs.)"""
    members = []
    for info in archive.infolist():
        name = info.filename.replace("\\", "/")  # archives made on Windows
        confine(target, name.rstrip("/"), f"{path}: member", flat=False)
        if info.file_size > MAX_MEMBER_BYTES:
            raise CaptionerError(
                f"{path}: member {info.filename[:80]!r} unpacks to {info.file_size >> 20} MB, over the "
                f"{MAX_MEMBER_BYTES >> 20} MB a member may have; not the archive the params name?"
            )
        if PurePosixPath(name).parts[0] != "__MACOSX" and not info.is_dir():
            members.append(info)
    needed, free = sum(info.file_size for info in members), shutil.disk_usage(_existing(target)).free
    if needed > free:
        raise CaptionerError(f"{path} unpacks to {needed >> 20} MB; {target} has {free >> 20} MB free")
    return members


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent (the folder a later mkdir would create it in)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def extract(zip_path: Path, target: Path, keep) -> int:
    """Extract the members for which ``keep(name)`` gives a relative output path; returns how many."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = [(info, keep(PurePosixPath(info.filename))) for info in _safe_members(archive, zip_path, target)]
            members = [(info, out) for info, out in members if out is not None]
            for info, out in progress(members, desc=f"download: extracting {zip_path.name}", unit="file"):
                destination = target / out
                destination.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as source, open(destination, "wb") as sink:
                    shutil.copyfileobj(source, sink)  # zipfile stops at the stated size, and checks the CRC
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as err:
        raise CaptionerError(f"{zip_path} is not a readable zip (truncated or corrupt?): {err}") from err
    return len(members)


def install_release(images_zip: Path, text_zip: Path, target: Path) -> None:
    """Extract the image folder and the caption and split files of the release into ``target``."""
    image_folder = PurePosixPath(Release.images)

    def image(name: PurePosixPath):
        return (
            image_folder / name.name
            if name.parent.name == IMAGES_FOLDER_IN_ZIP and name.suffix.lower() == ".jpg"
            else None
        )

    def text_file(name: PurePosixPath):
        return name.name if name.name in TEXT_FILES else None

    if extract(images_zip, target, image) == 0:
        raise CaptionerError(f"{images_zip} holds no {IMAGES_FOLDER_IN_ZIP}/*.jpg images")
    extract(text_zip, target, text_file)
    missing = [name for name in TEXT_FILES if not (target / name).exists()]
    if missing:
        raise CaptionerError(f"{text_zip} lacks {', '.join(missing)}")


def kaggle_split(image: str) -> str:
    """A stable split for the Kaggle copy, which has no split lists: 1/8 dev, 1/8 test, by name hash."""
    bucket = hashlib.md5(image.encode()).digest()[0] % 8
    return "dev" if bucket == 0 else "test" if bucket == 1 else "train"


def kaggle_rows(captions: Path) -> Iterator[tuple[str, str]]:
    """(image, caption) of each row of a Kaggle ``captions.txt`` (header ``image,caption``), read strictly by
    ``captioner.boundary.kaggle_rows``; each image name confined to the ``Images/`` folder beside it. Rows
    without an image name are left out; clean_captions counts what they leave."""
    lines = text_lines(captions)
    header = next(lines, "")
    if [field.strip() for field in header.split(",")] != ["image", "caption"]:
        raise CaptionerError(f"{captions}:1: expected the header image,caption, found {header[:60]!r}")
    for number, image, caption in boundary.kaggle_rows(captions, lines):
        if image:
            yield confine(captions.parent / "Images", image, f"{captions}:{number}: image").name, caption


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link (no copy of a 13 GB corpus) where the file system allows one, else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def install_kaggle(folder: Path, target: Path) -> None:
    """Rewrite a Kaggle-layout folder (``Images/``, ``captions.txt`` with ``image,caption``) as the release layout:
    the images its rows name linked (or copied) into the image folder, which clean_captions then reads."""
    images, captions = folder / "Images", folder / "captions.txt"
    for needed in (images, captions):
        if not needed.exists():
            raise CaptionerError(f"{folder} is not in the Kaggle layout: {needed.name} is missing")
        confine(folder, needed.name, f"{folder}:")  # a link to a folder elsewhere (/etc) would be copied in
    image_dir = target / Release.images
    image_dir.mkdir(parents=True)
    numbers: dict[str, int] = {}
    lines, splits = [], {split: [] for split in SPLITS}
    for image, caption in kaggle_rows(captions):
        number = numbers.setdefault(image, 0)
        numbers[image] += 1
        lines.append(f"{image}#{number}\t{' '.join(caption.split())}\n")  # no tab or newline inside
        if number == 0:
            splits[kaggle_split(image)].append(image)
            if (images / image).is_file():
                link_or_copy(images / image, image_dir / image)
    (target / Release.captions_file).write_text("".join(lines), encoding="utf-8")
    for split in SPLITS:
        (target / Release.split_list(split)).write_text(
            "".join(f"{i}\n" for i in sorted(splits[split])), encoding="utf-8"
        )
