"""Karpathy-split corpora (captioner.datasets.karpathy) land in the release layout the later stages read."""

import json
import os
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from captioner import CaptionerError
from captioner.datasets import clean_release, karpathy, parse_caption_line, read_split_list
from captioner.features import encoders
from captioner.features import extraction as features
from captioner.files import text_lines
from captioner.layout import SPLITS, Release
from captioner.text import Vocabulary

IMAGES = Release.images
KARPATHY_SPLIT = {"train": "train", "dev": "val", "test": "test"}


def karpathy_json_of_release(raw) -> dict:
    """The Karpathy split file of a release-layout folder: same images, captions and splits, token-file order."""
    split_of = {image: split for split in SPLITS for image in read_split_list(raw / Release.split_list(split))}
    sentences: dict[str, list[dict]] = {}
    for line in text_lines(raw / Release.captions_file):
        image, caption = parse_caption_line(line)
        if image in split_of:
            sentences.setdefault(image, []).append({"raw": caption, "tokens": caption.lower().split()})
    return {
        "dataset": "flickr8k",
        "images": [
            {"filename": image, "split": KARPATHY_SPLIT[split_of[image]], "sentences": sentences.get(image, [])}
            for image in sentences
        ],
    }


@pytest.mark.e2e  # the whole real Flickr8k copy (7,000 images) through both installs
def test_flickr8k_as_a_karpathy_split_file_gives_the_release_layouts_captions_vocabulary_and_features(
    shared_flickr8k, tmp_path
):
    release = tmp_path / "release"
    with zipfile.ZipFile(shared_flickr8k / "Flickr8k_text.zip") as archive:
        for member in archive.namelist():
            if member.endswith(".txt") and "readme" not in member:
                (release / member.split("/")[-1]).parent.mkdir(parents=True, exist_ok=True)
                (release / member.split("/")[-1]).write_bytes(archive.read(member))
    with zipfile.ZipFile(shared_flickr8k / "Flickr8k_Dataset.zip") as archive:
        for member in archive.namelist():
            if member.lower().endswith(".jpg"):
                (release / IMAGES).mkdir(parents=True, exist_ok=True)
                (release / IMAGES / member.split("/")[-1]).write_bytes(archive.read(member))
    split_file = tmp_path / "dataset_flickr8k.json"
    split_file.write_text(json.dumps(karpathy_json_of_release(release)))
    with zipfile.ZipFile(tmp_path / "caption_datasets.zip", "w") as archive:  # as Karpathy ships it
        archive.write(split_file, "dataset_flickr8k.json")

    converted = tmp_path / "converted"
    warnings = karpathy.install(
        {"split_url": str(tmp_path / "caption_datasets.zip"), "split_sha256": None, "split_file": split_file.name,
         "image_urls": [], "image_sha256": [], "images_dir": str(release / IMAGES), "restval": True},
        tmp_path / "downloads", converted,
    )  # fmt: skip
    assert warnings == []
    ours, theirs = clean_release(release), clean_release(converted)
    assert theirs.captions == ours.captions and sum(len(pairs) for pairs in ours.captions.values()) == 35_000 - 18
    # The split file lists only images with files (the release skips the rest); both drop the 18 repeated captions.
    assert theirs.skipped == {"duplicate": 18}
    vocab = [Vocabulary.build((tokens for _, tokens in cleaned.captions["train"]), 2, 34).tokens
             for cleaned in (ours, theirs)]  # fmt: skip
    assert vocab[0] == vocab[1]
    for split in SPLITS:  # in another order: the features stage sorts them
        assert sorted(read_split_list(converted / Release.split_list(split))) == sorted(
            read_split_list(release / Release.split_list(split))
        )
    images = sorted((release / IMAGES).iterdir())
    assert sorted(path.name for path in (converted / IMAGES).iterdir()) == [path.name for path in images]
    # The features stage reads the same bytes under the same names: spot-check the features themselves.
    picked = [path.name for path in images[:: len(images) // 6][:6]]
    extractor = features.Extractor(encoders.get("efficientnet_lite0"), "avg")
    for raw in (release, converted):
        extractor.write([raw / IMAGES / name for name in picked], raw / "f.h5", batch_size=6)
    with h5py.File(release / "f.h5") as a, h5py.File(converted / "f.h5") as b:
        np.testing.assert_array_equal(a["features"][:], b["features"][:])
        assert list(a["image_ids"][:]) == list(b["image_ids"][:])


def coco_style(tmp_path):
    """Two image folders (COCO's train2014 and val2014), a restval image and one listed image without a file."""
    root = tmp_path / "coco"
    for folder, name in (("train2014", "COCO_train2014_1.jpg"), ("train2014", "COCO_train2014_2.jpg"),
                         ("val2014", "COCO_val2014_3.jpg"), ("val2014", "COCO_val2014_4.jpg")):  # fmt: skip
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / name).write_bytes(name.encode())

    def entry(folder, name, split, *captions):
        return {"filepath": folder, "filename": name, "split": split, "cocoid": len(name),
                "sentences": [{"raw": caption, "tokens": caption.split()} for caption in captions]}  # fmt: skip

    images = [
        entry("train2014", "COCO_train2014_1.jpg", "train", "A man rides a horse.", "A rider on a horse"),
        entry("train2014", "COCO_train2014_2.jpg", "restval", "Two dogs play\tin  the snow"),
        entry("val2014", "COCO_val2014_3.jpg", "val", "A red bus."),
        entry("val2014", "COCO_val2014_4.jpg", "test", "A plate of food."),
        entry("val2014", "COCO_val2014_5.jpg", "test", "A cat on a bed."),  # no such file
    ]
    split_file = tmp_path / "dataset_coco.json"
    split_file.write_text(json.dumps({"dataset": "coco", "images": images}))
    return root, split_file


@pytest.mark.parametrize("restval", [True, False])
def test_a_coco_style_split_file_with_two_image_folders_restval_and_a_missing_image(tmp_path, restval):
    root, split_file = coco_style(tmp_path)
    target = tmp_path / "raw"
    warnings = karpathy.install_karpathy(karpathy.read_split_file(split_file, "x"), split_file, root, target, restval)
    assert warnings[0] == f"1 listed images are not under {root}: val2014/COCO_val2014_5.jpg"
    assert ("1 restval images left out (karpathy.restval: false)" in warnings) is not restval
    lists = {split: read_split_list(target / Release.split_list(split)) for split in SPLITS}
    train = ["COCO_train2014_1.jpg", "COCO_train2014_2.jpg"] if restval else ["COCO_train2014_1.jpg"]
    test = ["COCO_val2014_4.jpg", "COCO_val2014_5.jpg"]
    assert lists == {"train": train, "dev": ["COCO_val2014_3.jpg"], "test": test}
    assert (target / IMAGES / "COCO_val2014_3.jpg").read_bytes() == b"COCO_val2014_3.jpg"
    cleaned = clean_release(target)  # the missing image: one warning, its caption skipped
    assert cleaned.warnings == ["1 test images have no file: COCO_val2014_5.jpg"]
    assert cleaned.skipped == {"missing image": 1}
    assert [tokens for _, tokens in cleaned.captions["train"]][-1] == (
        ["<start>", "two", "dogs", "play", "in", "the", "snow", "<end>"] if restval
        else ["<start>", "a", "rider", "on", "a", "horse", "<end>"]
    )  # fmt: skip


def test_a_broken_split_file_is_one_line_naming_the_culprit(tmp_path):
    bad = tmp_path / "dataset_coco.json"
    bad.write_text('{"images": [{"filename": "a.jpg", "split": "train"}]}')
    with pytest.raises(CaptionerError, match=r"images\[0\]: sentences is missing"):
        karpathy.install_karpathy(karpathy.read_split_file(bad, "x"), bad, tmp_path, tmp_path / "raw", True)
    bad.write_text('{"images": [{"filename": "a.jpg", "split": "extra", "sentences": []}]}')
    with pytest.raises(CaptionerError, match=r"images\[0\] \(a.jpg\) has split 'extra'"):
        karpathy.install_karpathy(karpathy.read_split_file(bad, "x"), bad, tmp_path, tmp_path / "raw2", True)
    bad.write_text("{not json")
    with pytest.raises(CaptionerError, match="not a readable split JSON"):
        karpathy.read_split_file(bad, "x")
    with zipfile.ZipFile(tmp_path / "caption_datasets.zip", "w") as archive:
        archive.writestr("dataset_flickr8k.json", "{}")
    with pytest.raises(CaptionerError, match="holds no dataset_coco.json"):
        karpathy.read_split_file(tmp_path / "caption_datasets.zip", "dataset_coco.json")


def test_image_zips_are_fetched_verified_and_extracted_once(tmp_path, capsys):
    root, split_file = coco_style(tmp_path)
    zips = []
    for folder in ("train2014", "val2014"):
        with zipfile.ZipFile(tmp_path / f"{folder}.zip", "w") as archive:
            for image in sorted((root / folder).iterdir()):
                archive.write(image, f"{folder}/{image.name}")
        zips.append(str(tmp_path / f"{folder}.zip"))
    settings = {"split_url": str(split_file), "split_sha256": None, "split_file": "dataset_coco.json",
                "image_urls": zips, "image_sha256": [], "images_dir": str(tmp_path / "images"),
                "restval": True}  # fmt: skip
    karpathy.install(settings, tmp_path / "downloads", tmp_path / "raw")
    assert (tmp_path / "raw" / IMAGES / "COCO_train2014_2.jpg").read_bytes() == b"COCO_train2014_2.jpg"
    assert "no sha256 given for train2014.zip" in capsys.readouterr().out
    (tmp_path / "images" / "val2014" / "COCO_val2014_3.jpg").write_bytes(b"kept")  # not extracted again
    karpathy.install(settings, tmp_path / "downloads", tmp_path / "raw2")
    assert (tmp_path / "raw2" / IMAGES / "COCO_val2014_3.jpg").read_bytes() == b"kept"
    with pytest.raises(CaptionerError, match="sha256 .* does not match"):
        karpathy.install(settings | {"image_sha256": ["0" * 64, "0" * 64]}, tmp_path / "downloads", tmp_path / "r3")
    with pytest.raises(CaptionerError, match="image_sha256 has 1 entries for 2 image_urls"):
        karpathy.install(settings | {"image_sha256": ["0" * 64]}, tmp_path / "downloads", tmp_path / "r4")


ENTRY_VALUES = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["../x.jpg", "/etc/x.jpg", "a.jpg", "d/a.jpg", ".."]),
    st.none(),
    st.integers(),
    st.lists(st.integers(), max_size=2),
)
ENTRIES = st.lists(
    st.dictionaries(
        st.sampled_from(["filename", "filepath", "split", "sentences"]),
        st.one_of(
            ENTRY_VALUES,
            st.sampled_from(["train", "val", "test"]),
            st.lists(st.one_of(st.fixed_dictionaries({"raw": ENTRY_VALUES}), ENTRY_VALUES), max_size=2),
        ),
    ),
    max_size=4,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=ENTRIES)
def test_hostile_split_entries_install_inside_the_target_or_fail_naming_the_file(tmp_path, entries):
    root = tmp_path / "images"
    (root / "d").mkdir(parents=True, exist_ok=True)
    for name in ("a.jpg", "d/a.jpg"):
        (root / name).write_bytes(b"jpeg")
    target = tmp_path / "raw"
    shutil.rmtree(target, ignore_errors=True)
    try:
        karpathy.install_karpathy({"images": entries}, Path("split.json"), root, target, restval=True)
    except CaptionerError as err:
        assert str(err).startswith("split.json: images[")
        return
    written = [path for path in target.rglob("*") if path.is_file()]
    assert all(os.path.realpath(path).startswith(str(tmp_path)) for path in written)
    assert not (tmp_path / "x.jpg").exists()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"filename": "../../../../escape.jpg"}, r"images\[0\]: filename '../../../../escape.jpg' climbs out"),
        ({"filename": "a.jpg", "filepath": "/etc"}, r"images\[0\]: filepath '/etc' is absolute"),
        ({"filename": "/tmp/a.jpg"}, r"filename '/tmp/a.jpg' is absolute"),
        ({"filename": "a.jpg", "filepath": None}, r"images\[0\]: filepath is None; it must be text"),
        ({"filename": 7}, r"images\[0\]: filename is 7; it must be text"),
        ({"filename": "linked.jpg"}, r"images\[0\]: filename .*linked.jpg' is a link to .*outside"),
    ],
)
def test_a_split_entry_naming_a_file_outside_the_images_root_is_refused_before_anything_is_linked(
    tmp_path, entry, message
):
    root, outside = tmp_path / "images", tmp_path / "outside.jpg"
    root.mkdir()
    outside.write_bytes(b"secret")
    (root / "a.jpg").write_bytes(b"jpeg")
    (root / "linked.jpg").symlink_to(outside)
    split = {"images": [{"split": "train", "sentences": [{"raw": "A dog ."}]} | entry]}
    with pytest.raises(CaptionerError, match=message):
        karpathy.install_karpathy(split, Path("split.json"), root, tmp_path / "raw", restval=True)
    assert not list((tmp_path / "raw").rglob("*.jpg"))
