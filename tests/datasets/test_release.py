"""Reading and cleaning any dataset in the release layout (captioner.datasets)."""

import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from captioner import CaptionerError
from captioner.datasets import clean_release, parse_caption_line, read_captions, write_captions
from captioner.layout import SPLITS
from captioner.text import END, START


def test_parse_caption_line():
    assert parse_caption_line("a.jpg#3\tA dog .") == ("a.jpg", "A dog .")
    for bad in ("a.jpg#3 A dog", "a.jpg\tA dog", "#1\tA dog", "a.jpg#x\tA dog"):
        with pytest.raises(ValueError, match="malformed caption line"):
            parse_caption_line(bad)


def test_clean_release_splits_and_wraps_captions(shapes_raw):
    release = clean_release(shapes_raw)
    cleaned, skipped = release.captions, release.skipped
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
        repeated = next(line for line in (raw / "Flickr8k.token.txt").open() if line.startswith(other_image))
        caption = repeated.split("\t")[1].strip()
        for number in range(6, 27):  # one caption 21 times more, in other case and punctuation
            captions.write(f"{other_image}#{number}\t{caption.upper()} !\n")
    (raw / "Flicker8k_Dataset" / train_image).unlink()  # its five captions now lack an image
    release = clean_release(raw)
    cleaned, skipped = release.captions, release.skipped
    assert skipped == {"missing image": 6, "empty": 1, "malformed": 1, "duplicate": 21}
    assert train_image not in {image for image, _ in cleaned["train"]}


def test_missing_caption_file_is_a_stage_error(tmp_path):
    with pytest.raises(CaptionerError, match="Flickr8k.token.txt is missing"):
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
    release = clean_release(raw)
    cleaned, skipped = release.captions, release.skipped
    assert [len({image for image, _ in cleaned[split]}) for split in SPLITS] == [5000, 1000, 1000]
    assert skipped["malformed"] == 0 and skipped["duplicate"] == 18  # e.g. "A girl peers into a window ." twice
    assert skipped["missing image"] >= 5  # 2258277193_586949ec62.jpg.1, and captions of withheld images


@pytest.mark.parametrize("split", SPLITS)
def test_a_split_without_usable_captions_is_an_error_naming_it(shapes_raw, tmp_path, split):
    raw = tmp_path / "raw"
    shutil.copytree(shapes_raw, raw)
    (raw / f"Flickr_8k.{split}Images.txt").write_text("")
    with pytest.raises(CaptionerError, match=rf"the {split} split has no usable captions \(0 images listed in "):
        clean_release(raw)


def test_split_lists_with_a_byte_order_mark_lose_no_image(shapes_raw, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(shapes_raw, raw)
    for split in SPLITS:
        listed = raw / f"Flickr_8k.{split}Images.txt"
        listed.write_bytes("\ufeff".encode() + listed.read_text().replace("\n", "\r\n").encode())
    assert [len(clean_release(raw).captions[split]) for split in SPLITS] == [12 * 5, 6 * 5, 6 * 5]


def test_images_listed_twice_or_without_a_file_are_named_in_warnings(shapes_raw, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(shapes_raw, raw)
    train_list, test_list = raw / "Flickr_8k.trainImages.txt", raw / "Flickr_8k.testImages.txt"
    both = train_list.read_text().split()[0]
    test_list.write_text(test_list.read_text() + f"{both}\nghost_1.jpg\nghost_2.jpg\n")
    release = clean_release(raw)
    assert release.warnings == [
        f"1 test images are listed in train too; kept in test: {both}",
        "2 test images have no file: ghost_1.jpg, ghost_2.jpg",
    ]
    assert both in {image for image, _ in release.captions["test"]}
    assert both not in {image for image, _ in release.captions["train"]}


def test_a_caption_file_with_a_latin1_byte_is_an_error_naming_file_and_line(shapes_raw, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(shapes_raw, raw)
    with open(raw / "Flickr8k.token.txt", "ab") as captions:
        captions.write(b"shapes_000000.jpg#9\tA caf\xe9 .\n")
    with pytest.raises(CaptionerError, match=r"Flickr8k.token.txt:121: byte 0xe9 at column 26 is not UTF-8"):
        clean_release(raw)


@pytest.mark.parametrize(
    ("file", "line", "message"),
    [
        (
            "Flickr_8k.devImages.txt",
            "../../escape.jpg",
            r"Flickr_8k.devImages.txt:\d+: image '../../escape.jpg' climbs",
        ),
        ("Flickr_8k.testImages.txt", "/etc/passwd", r"Flickr_8k.testImages.txt:\d+: image '/etc/passwd' is absolute"),
        ("Flickr8k.token.txt", "../x.jpg#0\tA dog .", r"Flickr8k.token.txt:\d+: image '../x.jpg' climbs out"),
        ("Flickr_8k.trainImages.txt", "linked.jpg", r"trainImages.txt:\d+: image .*linked.jpg' is a link to .*outside"),
    ],
)
def test_a_name_leaving_the_image_folder_is_refused_naming_file_and_line(shapes_raw, tmp_path, file, line, message):
    raw = tmp_path / "raw"
    shutil.copytree(shapes_raw, raw)
    (tmp_path / "secret.jpg").write_bytes(b"outside")
    (raw / "Flicker8k_Dataset" / "linked.jpg").symlink_to(tmp_path / "secret.jpg")
    with open(raw / file, "a") as listed:
        listed.write(line + "\n")
    with pytest.raises(CaptionerError, match=message):
        clean_release(raw)


VALID_LINES = ["shapes_000000.jpg#9\tA red dog .", "unlisted.jpg#0\tA cat .", "a#b.jpg#1\t!?", "x.jpg\tno hash"]


def base_token_file(raw) -> str:
    return (raw / "Flickr8k.token.txt").read_text(encoding="utf-8")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.one_of(st.text(max_size=30), st.sampled_from(VALID_LINES)), max_size=20))
def test_hostile_caption_lines_are_each_kept_skipped_or_refused_naming_file_and_line(shapes_raw, tmp_path, lines):
    raw = tmp_path / "raw"
    if not raw.exists():
        shutil.copytree(shapes_raw, raw)
    body = "".join(f"{line}\n" for line in lines for line in line.splitlines() or [line])
    (raw / "Flickr8k.token.txt").write_text(base_token_file(shapes_raw) + body, encoding="utf-8")
    try:
        release = clean_release(raw)
    except CaptionerError as err:
        assert str(err).startswith(f"{raw / 'Flickr8k.token.txt'}:")
        return
    read = [line for line in (raw / "Flickr8k.token.txt").read_text(encoding="utf-8").split("\n") if line.strip()]
    kept = sum(len(pairs) for pairs in release.captions.values())  # every image with a file is in a split
    assert kept + sum(release.skipped.values()) == len(read)
