"""The trust boundary (captioner.boundary): generated hostile names and CSV, each either accepted whole or refused
in one CaptionerError naming the file; never another exception, never a path outside its root."""

import csv
import io
import os
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from captioner import CaptionerError, boundary

PIECES = ["..", ".", "/", "\\", "a", "b.jpg", "\0", "\n", "\t", "C:", " ", "#", "é", "~"]
NAMES = st.one_of(st.lists(st.sampled_from(PIECES), max_size=6).map("".join), st.text(max_size=20))
HOSTILE = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@HOSTILE
@given(name=NAMES, flat=st.booleans())
def test_a_confined_name_stays_inside_its_root_or_is_refused_naming_the_file(tmp_path, name, flat):
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    try:
        path = boundary.confine(root, name, "list.txt:3: image", flat=flat)
    except CaptionerError as err:
        assert str(err).startswith("list.txt:3: image ")
        return
    real = os.path.realpath(path)
    assert os.path.commonpath([real, os.path.realpath(root)]) == os.path.realpath(root)
    assert ".." not in Path(name).parts and not name.startswith("/") and "\0" not in name
    if flat:
        assert path.name == name and path.parent == root


@pytest.mark.parametrize("name", [None, 7, ["a.jpg"], {"a": 1}, 1.5, True])
def test_a_name_that_is_not_text_is_refused(tmp_path, name):
    with pytest.raises(CaptionerError, match=r"^split.json: images\[0\]: filename .* is not text"):
        boundary.confine(tmp_path, name, "split.json: images[0]: filename")


def test_symlinks_out_of_the_root_are_refused_and_those_inside_followed(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "inner").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"x")
    (root / "real.jpg").write_bytes(b"x")
    (root / "out.jpg").symlink_to(outside / "secret.jpg")
    (root / "out_folder").symlink_to(outside)
    (root / "in.jpg").symlink_to(root / "real.jpg")
    assert boundary.confine(root, "in.jpg", "f") == root / "in.jpg"
    assert boundary.confine(root, "inner/new.jpg", "f", flat=False) == root / "inner" / "new.jpg"
    for name in ("out.jpg", "out_folder/secret.jpg"):
        with pytest.raises(CaptionerError, match="is a link to .*outside"):
            boundary.confine(root, name, "f", flat=False)


def test_field_checks_types_and_names_the_entry():
    entry = {"filename": 3, "filepath": None, "split": "train", "flag": True}
    assert boundary.field(entry, "split", str, "s.json: images[2]") == "train"
    assert boundary.field(entry, "absent", str, "s.json: images[2]", default="") == ""
    with pytest.raises(CaptionerError, match=r"^s.json: images\[2\]: filename is 3; it must be text$"):
        boundary.field(entry, "filename", str, "s.json: images[2]")
    with pytest.raises(CaptionerError, match="filepath is None; it must be text"):
        boundary.field(entry, "filepath", str, "s.json: images[2]", default="")
    with pytest.raises(CaptionerError, match="flag is True; it must be a whole number"):
        boundary.field(entry, "flag", int, "s.json: images[2]")
    with pytest.raises(CaptionerError, match="sentences is missing"):
        boundary.field(entry, "sentences", list, "s.json: images[2]")


def rows_of(text: str) -> list[tuple[int, str, str]]:
    return list(boundary.kaggle_rows(Path("captions.txt"), iter(text.split("\n") if text else [])))


# Captions as a CSV writer quotes them: commas, quotes and newlines inside, no "." (so no line inside a quoted
# caption can start like a row of its own).
CAPTION_CHARACTERS = string.ascii_letters + " ,\"'\n-é"
ROWS = st.lists(
    st.tuples(
        st.from_regex(r"[a-z0-9_]{1,12}\.jpg", fullmatch=True),
        st.text(CAPTION_CHARACTERS, max_size=80).filter(lambda caption: caption.count("\n") < 3),
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(rows=ROWS)
def test_csv_that_a_csv_writer_made_reads_back_row_for_row_with_newlines_as_spaces(rows):
    body = io.StringIO()
    csv.writer(body, lineterminator="\n").writerows(rows)
    read = [(image, caption) for _, image, caption in rows_of(body.getvalue().removesuffix("\n"))]
    assert read == [(image, caption.replace("\n", " ")) for image, caption in rows]


@settings(max_examples=500, deadline=None)
@given(text=st.text(alphabet='ab.jpg,"\n x', max_size=120))
def test_hostile_csv_never_swallows_a_row_it_reads_and_fails_only_naming_file_and_line(text):
    lines = text.split("\n") if text else []
    try:
        rows = rows_of(text)
    except CaptionerError as err:
        assert str(err).startswith("captions.txt:")
        return
    starts = [number for number, _, _ in rows]
    assert starts == sorted(set(starts)) and (not lines or starts[0] == 2)
    for number, line in enumerate(lines, start=2):  # a line that opens a row is read as one
        if boundary._ROW_START.match(line):
            assert number in starts


def test_an_unterminated_quote_names_its_line_whether_near_the_end_or_the_start():
    near_end = 'a.jpg,A dog runs .\nb.jpg,"A cat\nc.jpg,A bird flies .'
    with pytest.raises(CaptionerError, match=r"^captions.txt:3: a quote opened here is still open at line 4"):
        rows_of(near_end)
    with pytest.raises(CaptionerError, match=r"^captions.txt:2: a quote opened here never closes"):
        rows_of('a.jpg,"A dog runs\nlike the wind')
    long_open = 'a.jpg,"A dog\n' + "\n".join("word " * 10 for _ in range(10))
    with pytest.raises(CaptionerError, match=r"^captions.txt:2: a quote opened here is still open at line 6"):
        rows_of(long_open)


def test_a_newline_inside_a_quoted_caption_is_a_space_and_text_after_a_closing_quote_is_refused():
    assert rows_of('a.jpg,"A dog\nruns"\nb.jpg,plain, with "quotes"') == [
        (2, "a.jpg", "A dog runs"),
        (4, "b.jpg", 'plain, with "quotes"'),
    ]
    with pytest.raises(CaptionerError, match=r"^captions.txt:2: text after the closing quote"):
        rows_of('a.jpg,"A dog" runs')


def test_a_field_beyond_the_caption_limit_names_its_line():
    with pytest.raises(CaptionerError, match=r"^captions.txt:3: a caption of over 5000 characters"):
        rows_of("a.jpg,ok\nb.jpg," + "x" * 5001)
