"""Fetching, verifying and safely extracting Flickr8k (captioner.datasets.flickr8k)."""

import hashlib
import http.server
import threading
import zipfile
from collections import namedtuple

import pytest

from captioner import CaptionerError
from captioner.datasets import flickr8k
from captioner.files import sha256_of
from captioner.layout import SPLITS

shutil_usage = namedtuple("usage", "total used free")


def make_release(folder, images=("a.jpg", "b.jpg", "c.jpg")):
    """A tiny pair of zips in the release layout (with the real release's __MACOSX clutter)."""
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / "images.zip", "w") as archive:
        for name in images:
            archive.writestr(f"Flicker8k_Dataset/{name}", b"jpeg bytes " + name.encode())
        archive.writestr("__MACOSX/Flicker8k_Dataset/._a.jpg", b"resource fork")
    with zipfile.ZipFile(folder / "text.zip", "w") as archive:
        archive.writestr("Flickr8k.token.txt", "".join(f"{n}#0\tA caption .\n" for n in images))
        for split, name in zip(SPLITS, images, strict=False):
            archive.writestr(f"Flickr_8k.{split}Images.txt", name + "\n")
        archive.writestr("readme.txt", "not needed")
    return folder / "images.zip", folder / "text.zip"


def test_local_path_and_file_url_are_verified_in_place(tmp_path):
    images, _ = make_release(tmp_path)
    digest = sha256_of(images)
    assert flickr8k.fetch(str(images), digest, tmp_path / "downloads") == images
    assert flickr8k.fetch(images.as_uri(), digest.upper(), tmp_path / "downloads") == images
    assert not (tmp_path / "downloads").exists()


def test_wrong_checksum_names_the_file(tmp_path):
    images, _ = make_release(tmp_path)
    with pytest.raises(CaptionerError, match=r"images.zip: sha256 [0-9a-f]{64} does not match the expected 00ff"):
        flickr8k.fetch(str(images), "00ff", tmp_path / "downloads")


def test_missing_local_file_is_one_clear_error(tmp_path):
    with pytest.raises(CaptionerError, match="nothing.zip does not exist"):
        flickr8k.fetch(str(tmp_path / "nothing.zip"), None, tmp_path / "downloads")


def test_no_checksum_prints_the_actual_one(tmp_path, capsys):
    images, _ = make_release(tmp_path)
    flickr8k.fetch(str(images), None, tmp_path / "downloads")
    assert sha256_of(images) in capsys.readouterr().out


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves one payload and honours ``Range: bytes=N-``, as the release's host does."""

    payload = b""
    ranges_seen: list = []

    def do_GET(self):
        start = 0
        if "Range" in self.headers:
            start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
            self.ranges_seen.append(start)
        body = self.payload[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_http_download_resumes_a_partial_file(tmp_path):
    payload = bytes(range(256)) * 4096
    RangeHandler.payload, RangeHandler.ranges_seen = payload, []
    server = http.server.HTTPServer(("127.0.0.1", 0), RangeHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        downloads = tmp_path / "downloads"
        downloads.mkdir()
        (downloads / "data.zip.part").write_bytes(payload[:100_000])  # left by an interrupted run
        url = f"http://127.0.0.1:{server.server_port}/files/data.zip"
        path = flickr8k.fetch(url, hashlib.sha256(payload).hexdigest(), downloads)
    finally:
        server.shutdown()
    assert RangeHandler.ranges_seen == [100_000]
    assert path == downloads / "data.zip" and path.read_bytes() == payload
    assert not (downloads / "data.zip.part").exists()


def test_bad_http_download_is_removed_so_it_is_not_reused(tmp_path):
    RangeHandler.payload, RangeHandler.ranges_seen = b"not the file", []
    server = http.server.HTTPServer(("127.0.0.1", 0), RangeHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(CaptionerError, match="does not match"):
            flickr8k.fetch(f"http://127.0.0.1:{server.server_port}/x.zip", "0" * 64, tmp_path)
    finally:
        server.shutdown()
    assert list(tmp_path.iterdir()) == []


def test_install_release_writes_the_layout_and_skips_clutter(tmp_path):
    images, text = make_release(tmp_path / "zips")
    flickr8k.install_release(images, text, tmp_path / "raw")
    assert sorted(p.name for p in (tmp_path / "raw" / "Flicker8k_Dataset").iterdir()) == ["a.jpg", "b.jpg", "c.jpg"]
    assert sorted(p.name for p in (tmp_path / "raw").iterdir() if p.is_file()) == sorted(flickr8k.TEXT_FILES)


def test_truncated_zip_is_reported_by_name(tmp_path):
    images, text = make_release(tmp_path / "zips")
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(images.read_bytes()[:-60])
    with pytest.raises(CaptionerError, match="truncated.zip is not a readable zip"):
        flickr8k.install_release(truncated, text, tmp_path / "raw")


@pytest.mark.parametrize(
    "evil", ["../escape.txt", "/etc/escape.txt", "Flicker8k_Dataset/../../escape.jpg", "C:/escape.jpg"]
)
def test_member_escaping_the_folder_is_refused_before_anything_is_written(tmp_path, evil):
    images, text = make_release(tmp_path / "zips")
    with zipfile.ZipFile(images, "a") as archive:
        archive.writestr(evil, b"payload")
    with pytest.raises(CaptionerError, match="member .* (climbs out with '..'|is absolute)"):
        flickr8k.install_release(images, text, tmp_path / "raw")
    assert not (tmp_path / "raw").exists() and not (tmp_path / "escape.txt").exists()


def test_a_member_or_archive_bigger_than_allowed_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    images, text = make_release(tmp_path / "zips")
    with zipfile.ZipFile(images, "a", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("Flicker8k_Dataset/zeros.jpg", bytes(5000))  # compresses to a few bytes
    monkeypatch.setattr(flickr8k, "MAX_MEMBER_BYTES", 4000)
    with pytest.raises(CaptionerError, match=r"images.zip: member 'Flicker8k_Dataset/zeros.jpg' unpacks to 0 MB, over"):
        flickr8k.install_release(images, text, tmp_path / "raw")
    monkeypatch.setattr(flickr8k, "MAX_MEMBER_BYTES", 1 << 20)
    monkeypatch.setattr(flickr8k.shutil, "disk_usage", lambda path: shutil_usage(total=10**6, used=10**6, free=1000))
    with pytest.raises(CaptionerError, match=r"images.zip unpacks to 0 MB; .*raw has 0 MB free"):
        flickr8k.install_release(images, text, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_a_kaggle_images_folder_that_links_elsewhere_is_refused(tmp_path):
    kaggle, elsewhere = tmp_path / "kaggle", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "passwd").write_text("root:x:0:0")
    kaggle.mkdir()
    (kaggle / "Images").symlink_to(elsewhere)
    (kaggle / "captions.txt").write_text("image,caption\npasswd,A secret .\n")
    with pytest.raises(CaptionerError, match=r"kaggle: 'Images' is a link to .*elsewhere, outside .*kaggle"):
        flickr8k.install_kaggle(kaggle, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_kaggle_layout_becomes_the_release_layout(tmp_path):
    kaggle = tmp_path / "kaggle"
    (kaggle / "Images").mkdir(parents=True)
    names = [f"{i}.jpg" for i in range(40)]
    for name in names:
        (kaggle / "Images" / name).write_bytes(b"jpeg")
    rows = "".join(f'{name},"A dog, running ."\n{name},A cat .\n' for name in names)
    (kaggle / "captions.txt").write_text("image,caption\n" + rows)
    flickr8k.install_kaggle(kaggle, tmp_path / "raw")
    lines = (tmp_path / "raw" / "Flickr8k.token.txt").read_text().splitlines()
    assert lines[:2] == ["0.jpg#0\tA dog, running .", "0.jpg#1\tA cat ."]
    splits = {s: (tmp_path / "raw" / f"Flickr_8k.{s}Images.txt").read_text().split() for s in SPLITS}
    assert sorted(sum(splits.values(), [])) == sorted(names) and all(splits.values())


def test_folder_not_in_kaggle_layout_is_refused(tmp_path):
    with pytest.raises(CaptionerError, match="captions.txt is missing|Images is missing"):
        flickr8k.install_kaggle(tmp_path, tmp_path / "raw")


def test_kaggle_captions_with_a_byte_order_mark_and_unquoted_commas_keep_every_row(tmp_path):
    kaggle = tmp_path / "kaggle"
    (kaggle / "Images").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg"):
        (kaggle / "Images" / name).write_bytes(b"jpeg")
    rows = (
        "image,caption\r\n"
        "a.jpg,A dog , a cat , and a bird play .\r\n"  # unquoted: everything after the first comma
        'a.jpg,"A dog, quoted ."\r\n'
        'b.jpg,A man says "hi" , waving .\r\n'
        ",no image\r\n"
    )
    (kaggle / "captions.txt").write_bytes("\ufeff".encode() + rows.encode())  # as Excel saves CSV
    flickr8k.install_kaggle(kaggle, tmp_path / "raw")
    assert (tmp_path / "raw" / "Flickr8k.token.txt").read_text().splitlines() == [
        "a.jpg#0\tA dog , a cat , and a bird play .",
        "a.jpg#1\tA dog, quoted .",
        'b.jpg#0\tA man says "hi" , waving .',
    ]


def test_kaggle_captions_without_the_header_are_refused_naming_the_file(tmp_path):
    (tmp_path / "Images").mkdir()
    (tmp_path / "captions.txt").write_text("a.jpg,A dog .\n")
    with pytest.raises(CaptionerError, match=r"captions.txt:1: expected the header image,caption, found 'a.jpg,A dog"):
        flickr8k.install_kaggle(tmp_path, tmp_path / "raw")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("../../escape.jpg,A dog .", r"captions.txt:3: image '../../escape.jpg' climbs out with '..'"),
        ("/etc/escape.jpg,A dog .", r"captions.txt:3: image '/etc/escape.jpg' is absolute"),
        ("sub/b.jpg,A dog .", r"captions.txt:3: image 'sub/b.jpg' is not a plain file name"),
        ("linked.jpg,A dog .", r"captions.txt:3: image .*linked.jpg' is a link to .*outside"),
        ('b.jpg,"A dog\nc.jpg,A cat .', r"captions.txt:3: a quote opened here is still open at line 4"),
    ],
)
def test_a_kaggle_row_naming_a_file_outside_images_or_left_open_is_refused(tmp_path, row, message):
    kaggle = tmp_path / "kaggle"
    (kaggle / "Images" / "sub").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg", "c.jpg", "sub/b.jpg"):
        (kaggle / "Images" / name).write_bytes(b"jpeg")
    (tmp_path / "escape.jpg").write_bytes(b"outside")
    (kaggle / "Images" / "linked.jpg").symlink_to(tmp_path / "escape.jpg")
    (kaggle / "captions.txt").write_text(f"image,caption\na.jpg,A dog .\n{row}\n")
    with pytest.raises(CaptionerError, match=message):
        flickr8k.install_kaggle(kaggle, tmp_path / "raw")


def test_kaggle_install_links_only_the_named_images_and_no_folder(tmp_path):
    kaggle = tmp_path / "kaggle"
    (kaggle / "Images").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "big.jpg").write_bytes(b"not ours")
    (kaggle / "Images" / "folder").symlink_to(tmp_path / "elsewhere")  # a symlinked folder is not copied whole
    (kaggle / "Images" / "a.jpg").write_bytes(b"jpeg")
    (kaggle / "captions.txt").write_text('image,caption\na.jpg,"A dog\nruns ."\n')
    flickr8k.install_kaggle(kaggle, tmp_path / "raw")
    assert [path.name for path in (tmp_path / "raw" / "Flicker8k_Dataset").iterdir()] == ["a.jpg"]
    assert (tmp_path / "raw" / "Flickr8k.token.txt").read_text() == "a.jpg#0\tA dog runs .\n"
