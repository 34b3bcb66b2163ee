"""Feature extraction into HDF5 (captioner.features.extraction)."""

import json
import shutil

import h5py
import numpy as np
import pytest

from captioner import CaptionerError, process
from captioner.features import encoders
from captioner.features import extraction as features
from tests.conftest import animated_gif


@pytest.fixture(scope="module")
def lite0():
    return encoders.get("efficientnet_lite0")


def test_unknown_encoder_lists_the_known_ones():
    with pytest.raises(CaptionerError, match="unknown encoder 'vgg17'; choose one of: efficientnet_lite0"):
        encoders.get("vgg17")


def test_pooled_features_with_attributes_and_a_corrupt_image_skipped(lite0, shapes_raw, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(shapes_raw / "Flicker8k_Dataset", images)
    paths = sorted(images.iterdir())[:5]
    paths[2].write_bytes(paths[2].read_bytes()[:300])  # truncated JPEG
    paths.append(images / "not_an_image.jpg")
    paths[-1].write_text("hello")
    target = tmp_path / "features" / "efficientnet_lite0.h5"
    skipped = features.extract(lite0, paths, target, pooling="avg", batch_size=2)
    assert skipped == [paths[2].name, "not_an_image.jpg"]
    with h5py.File(target) as store:
        assert store["features"].shape == (4, lite0.channels) and store["features"].dtype == np.float16
        assert store["features"].chunks == (1, lite0.channels)
        assert list(store["image_ids"].asstr()[:]) == [p.name for i, p in enumerate(paths[:5]) if i != 2]
        assert dict(store.attrs) | {"weights": None} == {
            "encoder": "efficientnet_lite0",
            "weights": None,
            "input_size": 224,
            "pooling": "avg",
            "preprocessing": "(x - 127) / 128",
            "weights_param": "imagenet",
            "machine": json.dumps(process.machine()),
        }
        assert "sha256:" + "579344248a93" in store.attrs["weights"]
        assert np.isfinite(store["features"][:]).all() and (store["features"][:] != 0).any(axis=1).all()
    assert sorted(p.name for p in target.parent.iterdir()) == ["efficientnet_lite0.h5"]


def test_grid_features_pool_to_the_avg_features(lite0, shapes_raw, tmp_path):
    paths = sorted((shapes_raw / "Flicker8k_Dataset").iterdir())[:3]
    features.extract(lite0, paths, tmp_path / "grid.h5", pooling="grid", batch_size=4)
    features.extract(lite0, paths, tmp_path / "avg.h5", pooling="avg", batch_size=4)
    with h5py.File(tmp_path / "grid.h5") as store:
        assert store["features"].shape == (3, lite0.grid, lite0.grid, lite0.channels)
    rows = np.array([2, 0, 2, 1])
    with features.FeatureFile(tmp_path / "grid.h5", "efficientnet_lite0") as grid:
        from_grid = grid.read(rows, pooled=True)
        assert grid.read(rows, pooled=False).shape == (4, lite0.grid**2, lite0.channels)
        assert grid.shape(pooled=False) == (lite0.grid**2, lite0.channels)
        np.testing.assert_array_equal(grid.reader(pooled=True)(rows), from_grid)
    with features.FeatureFile(tmp_path / "avg.h5", "efficientnet_lite0") as avg:
        from_avg = avg.read(rows, pooled=True)
        assert avg.row_of == {p.name: i for i, p in enumerate(paths)}
        with pytest.raises(CaptionerError, match="attention needs the feature grid.*set features.pooling to grid"):
            avg.shape(pooled=False)
    np.testing.assert_allclose(from_grid, from_avg, atol=2e-2, rtol=2e-2)


def test_reader_refuses_a_file_of_another_encoder(lite0, shapes_raw, tmp_path):
    paths = sorted((shapes_raw / "Flicker8k_Dataset").iterdir())[:1]
    features.extract(lite0, paths, tmp_path / "f.h5", pooling="avg", batch_size=1)
    with pytest.raises(CaptionerError, match="holds efficientnet_lite0 features, but params say encoder vgg16"):
        features.FeatureFile(tmp_path / "f.h5", "vgg16")
    with pytest.raises(CaptionerError, match="missing; run the extract_features stage"):
        features.FeatureFile(tmp_path / "none.h5", "efficientnet_lite0")


def _with_orientation(pixels: np.ndarray, orientation: int, path, **save):
    from PIL import Image

    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[features.ORIENTATION_TAG] = orientation
    image.save(path, exif=exif, **save)
    return path


def pillow_orientation(encoded: bytes) -> int:
    """The EXIF orientation Pillow reads (1 when absent or unparsable): what ``features.exif_orientation`` follows."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(encoded)) as image:
            orientation = image.getexif().get(features.ORIENTATION_TAG, 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return 1
    return orientation if orientation in range(1, 9) else 1


def _exif_chunk_damaged(encoded: bytes) -> bool:
    """Whether a PNG's eXIf chunk fails its CRC: Pillow then drops the tag; the TensorFlow reader checks no CRC."""
    import zlib

    at = encoded.find(b"eXIf")
    if not encoded.startswith(b"\x89PNG") or at < 4:
        return False
    length = int.from_bytes(encoded[at - 4 : at], "big")
    crc = encoded[at + 4 + length : at + 8 + length]
    return zlib.crc32(encoded[at : at + 4 + length]).to_bytes(4, "big") != crc


@pytest.mark.parametrize("image_format", ["JPEG", "PNG"])
def test_the_tensorflow_exif_reader_reads_what_pillow_reads_and_survives_damaged_bytes(image_format):
    """Generated hostile input: the image's first bytes flipped at random, or the file cut short. The graph-only
    reader (the exported model's) never fails, always says 1–8, and agrees with Pillow on every image that still
    decodes, both byte orders."""
    import io
    import warnings

    import tensorflow as tf
    from PIL import Image

    read = tf.function(features.exif_orientation, input_signature=[tf.TensorSpec((), tf.string)])
    rng = np.random.default_rng(4)
    image = Image.fromarray(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8))
    originals = []
    for order in ("little", "big"):
        for orientation in range(1, 9):
            buffer = io.BytesIO()
            image.save(buffer, image_format, exif=b"Exif\0\0" + _tiff_orientation(orientation, order))
            originals.append(buffer.getvalue())
    assert [int(read(encoded)) for encoded in originals] == [*range(1, 9)] * 2
    assert [pillow_orientation(encoded) for encoded in originals] == [*range(1, 9)] * 2
    agreed = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's notes on the corrupt EXIF it meets
        for trial in range(150):
            damaged = bytearray(originals[trial % 16])
            if trial % 3 == 0:
                damaged = damaged[: rng.integers(0, len(damaged))]
            else:
                for index in rng.integers(0, 120, size=rng.integers(1, 4)):
                    damaged[index] = rng.integers(0, 256)
                if image_format == "PNG":  # else Pillow drops the chunk for its CRC, and nothing is compared
                    damaged = bytearray(_with_crc_fixed(bytes(damaged)))
            orientation = int(read(bytes(damaged)))
            assert 1 <= orientation <= 8
            try:
                tf.io.decode_image(bytes(damaged), channels=3, expand_animations=False)
            except tf.errors.OpError:
                continue
            if not _exif_chunk_damaged(bytes(damaged)):
                assert orientation == pillow_orientation(bytes(damaged)), trial
                agreed += 1
    assert agreed >= 10  # not vacuous: damaged images that still decode, compared


def _with_crc_fixed(encoded: bytes) -> bytes:
    """A PNG with its eXIf chunk's CRC recomputed (when it still has one)."""
    import zlib

    at = encoded.find(b"eXIf")
    if at < 4:
        return encoded
    length = int.from_bytes(encoded[at - 4 : at], "big")
    crc = zlib.crc32(encoded[at : at + 4 + length]).to_bytes(4, "big")
    return encoded[: at + 4 + length] + crc + encoded[at + 8 + length :]


def _tiff_orientation(orientation: int, order: str) -> bytes:
    """A TIFF header and an IFD0 holding only the orientation tag (type SHORT, count 1), in either byte order."""
    mark, short, long = (b"II*\0", 2, 4) if order == "little" else (b"MM\0*", 2, 4)

    def number(value: int, width: int) -> bytes:
        return value.to_bytes(width, order)

    entry = number(features.ORIENTATION_TAG, short) + number(3, short) + number(1, long) + number(orientation, 2)
    header = (mark[:2] + number(42, 2)) if order == "little" else mark
    return header + number(8, long) + number(1, short) + entry + b"\0\0" + number(0, long)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_turned_upright_as_pillow_does(tmp_path, orientation):
    from PIL import Image, ImageOps

    pixels = np.random.default_rng(orientation).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    path = _with_orientation(pixels, orientation, tmp_path / "photo.png")  # lossless: compare exactly
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"), dtype=np.float32)
    size = max(expected.shape[:2])
    loaded = features.load_image(str(path), size, lambda image: image).numpy()
    resized_expected = features.load_image(str(_with_orientation(expected.astype(np.uint8), 1, tmp_path / "up.png")),
                                           size, lambda image: image).numpy()  # fmt: skip
    np.testing.assert_array_equal(loaded, resized_expected)
    assert (orientation in (5, 6, 7, 8)) == (expected.shape[:2] == (20, 12))


def test_a_phone_photo_stored_turned_gets_the_features_of_the_upright_photo(lite0, tmp_path):
    """A JPEG stored sideways with EXIF orientation 6 (as phones save portrait photos), through extraction and
    through the caption command's path (``Extractor.features``), gives the features of the photo upright."""
    upright = np.zeros((96, 64, 3), dtype=np.uint8)
    upright[:32] = (230, 30, 30)  # red on top: wrong side up, the encoder would see another picture
    upright[32:] = (30, 90, 220)
    stored = np.rot90(upright, 1).copy()  # how the sensor wrote it; orientation 6 turns it back
    sideways = _with_orientation(stored, 6, tmp_path / "phone.jpg", quality=95)
    straight = _with_orientation(upright, 1, tmp_path / "straight.jpg", quality=95)
    extractor = features.Extractor(lite0, "avg")
    values, failures = extractor.features([sideways, straight])
    assert failures == {}
    cosine = values[0] @ values[1] / np.linalg.norm(values[0]) / np.linalg.norm(values[1])
    assert cosine > 0.99
    target = tmp_path / "lite0.h5"
    extractor.write([sideways, straight], target, batch_size=2)
    with h5py.File(target) as store:
        np.testing.assert_allclose(store["features"][0], values[0], atol=0.05)


def test_an_image_is_refused_before_decoding_by_the_pixels_of_all_its_frames(tmp_path):
    from PIL import Image

    bomb, animation = tmp_path / "bomb.gif", tmp_path / "three.gif"
    bomb.write_bytes(animated_gif(1000, 1000, 100))  # 1.5 KB: 100 frames of 1 MP once decoded
    frames = [Image.new("RGB", (50, 40), colour) for colour in ("red", "blue", "green")]
    frames[0].save(animation, save_all=True, append_images=frames[1:])
    huge = tmp_path / "huge.jpg"
    Image.new("L", (9000, 9000)).save(huge, quality=1)  # a JPEG's size is read from its header too
    assert features.image_problem(bomb) == "1000×1000 pixels in 81+ frames, over the 80 million an image may have"
    assert features.image_problem(animation) is None
    assert features.image_problem(huge) == "9000×9000 pixels, over the 80 million an image may have"
