"""Reading and cleaning any dataset in the release layout (captioner.datasets)."""

import shutil

import pytest

from captioner.datasets import clean_release, parse_caption_line, read_captions, write_captions
from captioner.stage import SPLITS, StageError
from captioner.text import END, START


def test_parse_caption_line():
    assert parse_caption_line("a.jpg#3\tA dog .") == ("a.jpg", "A dog .")
    for bad in ("a.jpg#3 A dog", "a.jpg\tA dog", "#1\tA dog", "a.jpg#x\tA dog"):
        with pytest.raises(ValueError, match="malformed caption line"):
            parse_caption_line(bad)


def test_clean_release_splits_and_wraps_captions(shapes_raw):
    cleaned, skipped = clean_release(shapes_raw)
    assert sum(skipped.values()) == 0
    assert [len(cleaned[split]) for split in SPLITS] == [12 * 5, 6 * 5, 6 * 5]
    image, tokens = cleaned["train"][0]
    assert tokens[0] == START and tokens[-1] == END and all(t.isalpha() for t in tokens[1:-1])
    assert not {i for i, _ in cleaned["train"]} & {i for i, _ in cleaned["test"]}


def test_dirty_lines_are_skipped_and_counted(shapes_raw, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(shapes_raw, raw)
    train_image, other_image = (raw / "Flickr_8k.trainImages.txt").read_text().split()[:2]
    with open(raw / "Flickr8k.token.txt", "a") as captions:
        captions.write("2258277193_586949ec62.jpg.1#0\tpeople waiting for the subway\n")  # the release's own defect
        captions.write(f"{other_image}#5\t?! 42 ...\n")  # nothing alphabetic left
        captions.write("no tab or hash here\n")
    (raw / "Flicker8k_Dataset" / train_image).unlink()  # its five captions now lack an image
    cleaned, skipped = clean_release(raw)
    assert skipped == {"missing image": 6, "empty": 1, "malformed": 1}
    assert train_image not in {image for image, _ in cleaned["train"]}


def test_missing_caption_file_is_a_stage_error(tmp_path):
    with pytest.raises(StageError, match="Flickr8k.token.txt is missing"):
        clean_release(tmp_path)


def test_captions_file_round_trip(tmp_path):
    pairs = [("a.jpg", [START, "a", "dog", END]), ("b.jpg", [START, "cat", END])]
    write_captions(tmp_path / "train.tsv", pairs)
    assert read_captions(tmp_path / "train.tsv") == pairs


def test_real_release_text_is_cleaned_with_its_defect_skipped(shared_flickr8k, tmp_path):
    import zipfile

    raw = tmp_path / "raw"
    with zipfile.ZipFile(shared_flickr8k / "Flickr8k_text.zip") as archive:
        archive.extractall(raw)
    (raw / "Flicker8k_Dataset").mkdir()
    listed = {name for split in SPLITS for name in (raw / f"Flickr_8k.{split}Images.txt").read_text().split()}
    for name in listed:  # stand-in image files: this test is about the captions
        (raw / "Flicker8k_Dataset" / name).touch()
    cleaned, skipped = clean_release(raw)
    assert [len({image for image, _ in cleaned[split]}) for split in SPLITS] == [5000, 1000, 1000]
    assert skipped["malformed"] == 0
    assert skipped["missing image"] >= 5  # 2258277193_586949ec62.jpg.1, and captions of withheld images
