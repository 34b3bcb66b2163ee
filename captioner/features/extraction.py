"""Image features: run a frozen encoder once over every image into one HDF5 file per encoder.

File layout: ``features`` (float16, one chunk per image; N×C pooled or N×H×W×C grid),
``image_ids`` (UTF-8 names), and attributes naming the encoder, its weights, input size,
pooling and preprocessing, so a reader can refuse a file made for other params.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np

from captioner import CaptionerError, artifacts, process
from captioner.datasets import read_split_list
from captioner.features import encoders
from captioner.features.encoders import Encoder
from captioner.files import atomic_path, progress, write_text
from captioner.layout import SPLITS, Layout

POOLINGS = ("avg", "grid")


def exif_orientation(encoded):
    """The EXIF orientation (1–8) of an encoded image (a string tensor), read with TensorFlow ops alone so that it
    runs inside the exported model too: the IFD0 orientation tag of a JPEG's Exif APP1 segment or of a PNG's eXIf
    chunk, as Pillow's ``getexif`` reads it. 1 (upright) when the image has none or it does not parse."""
    import tensorflow as tf

    raw = tf.io.decode_raw(tf.strings.substr(encoded, 0, EXIF_SEARCH_BYTES), tf.uint8)
    size = tf.shape(raw)[0]
    data = tf.concat([tf.cast(raw, tf.int32), tf.zeros([1], tf.int32)], 0)  # a read past the end sees a zero

    def at(index):
        return tf.gather(data, tf.clip_by_value(index, 0, size))

    def number(index, width: int, little):  # an unsigned integer of ``width`` bytes; ``index`` may be a vector
        digits = [at(index + k) for k in range(width)]
        value = sum(digit * 256**k for k, digit in enumerate(digits))
        return tf.where(little, value, sum(digit * 256**k for k, digit in enumerate(reversed(digits))))

    def spells(index, text: bytes):
        return tf.reduce_all(tf.stack([at(index + k) == byte for k, byte in enumerate(text)]))

    png, jpeg = spells(0, b"\x89PNG\r\n\x1a\n"), spells(0, b"\xff\xd8")

    def walking(position, tiff, end):
        inside = (tiff < 0) & (position + 10 <= size)
        jpeg_segment = (at(position) == 0xFF) & (at(position + 1) >= 0xC0) & (at(position + 1) != 0xDA)
        return inside & tf.where(png, ~spells(position + 4, b"IEND"), jpeg & jpeg_segment)

    def next_part(position, tiff, end):  # past a PNG chunk (length, type, data, CRC) or a JPEG segment
        length = tf.where(png, number(position, 4, False) + 12, number(position + 2, 2, False) + 2)
        exif_chunk = spells(position + 4, b"eXIf")
        exif_segment = spells(position, b"\xff\xe1") & spells(position + 4, b"Exif\0\0")
        exif = tf.where(png, exif_chunk, exif_segment)
        tiff = tf.where(exif, position + tf.where(png, 8, 10), tiff)
        end = tf.where(exif, position + length - tf.where(png, 4, 0), end)  # where the Exif data ends
        return position + tf.maximum(length, 4), tiff, end

    start = (tf.where(png, 8, 2), tf.constant(-1), tf.constant(0))
    _, tiff, end = tf.while_loop(walking, next_part, start, maximum_iterations=EXIF_MAX_PARTS)
    little = spells(tiff, b"II*\0")
    header = little | spells(tiff, b"MM\0*")
    ifd = tiff + number(tiff + 4, 4, little)
    entries = ifd + 2 + 12 * tf.range(EXIF_MAX_ENTRIES)
    present = (tf.range(EXIF_MAX_ENTRIES) < number(ifd, 2, little)) & (entries + 12 <= tf.minimum(end, size))
    one_short = (number(entries + 2, 2, little) == 3) & (number(entries + 4, 4, little) == 1)  # type SHORT, count 1
    orientation = present & (number(entries, 2, little) == ORIENTATION_TAG) & one_short
    value = number(tf.gather(entries, tf.argmax(orientation, output_type=tf.int32)) + 8, 2, little)
    found = (tiff >= 0) & header & tf.reduce_any(orientation) & (value >= 1) & (value <= 8)
    return tf.where(found, value, 1)


EXIF_SEARCH_BYTES = 1 << 16  # an Exif segment is at most 64 KB, and comes first in a JPEG
EXIF_MAX_PARTS, EXIF_MAX_ENTRIES = 64, 64  # segments or chunks walked, IFD0 entries read (a camera's IFD0 has ~12)


ORIENTATION_TAG = 0x0112


def upright(image, orientation):
    """``image`` (H×W×C) turned as its EXIF ``orientation`` says, as ``PIL.ImageOps.exif_transpose`` turns it."""
    import tensorflow as tf

    def transpose(x):
        return tf.transpose(x, (1, 0, 2))

    turns = [
        lambda: image,
        lambda: tf.reverse(image, [1]),  # 2: mirrored left-right
        lambda: tf.image.rot90(image, 2),  # 3: upside down
        lambda: tf.reverse(image, [0]),  # 4: mirrored top-bottom
        lambda: transpose(image),  # 5
        lambda: tf.image.rot90(image, 3),  # 6: phone held upright, stored turned left
        lambda: tf.image.rot90(transpose(image), 2),  # 7
        lambda: tf.image.rot90(image, 1),  # 8
    ]
    return tf.switch_case(orientation - 1, turns)


MAX_IMAGE_BYTES = 64 << 20  # a photo is a few MB; a bigger file is not one, and reading it whole costs memory
MAX_IMAGE_PIXELS = 80_000_000  # decoded (×3 bytes) a 240 MB image; a few-KB PNG can claim far more


def image_problem(path: Path | str) -> str | None:
    """Why ``path`` cannot be read as an image, found before it is read (so a FIFO, a device or a decompression
    bomb never stalls or floods a run), or None."""
    from PIL import Image, UnidentifiedImageError

    try:
        info = os.stat(path)
    except OSError as err:
        return "no such file" if isinstance(err, FileNotFoundError) else err.strerror
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if info.st_size > MAX_IMAGE_BYTES:
        return f"{info.st_size >> 20} MB, over the {MAX_IMAGE_BYTES >> 20} MB an image may have"
    try:
        with warnings.catch_warnings():  # PIL's bomb warning: the size check below says it in one line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                # TensorFlow decodes every frame of an animated GIF (then keeps the first): each one costs.
                frames = _frames(image, MAX_IMAGE_PIXELS // max(width * height, 1) + 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
        return "not a readable image"
    if width * height * frames > MAX_IMAGE_PIXELS:
        size = f"{width}×{height} pixels" + (f" in {frames}{'+' if frames > 1 else ''} frames" if frames > 1 else "")
        return f"{size}, over the {MAX_IMAGE_PIXELS // 1_000_000} million an image may have"
    return None


def _frames(image, limit: int) -> int:
    """How many frames ``image`` (a PIL image, open) holds, counted up to ``limit``: each is found by seeking,
    which skips its pixel data without decoding it."""
    if image.format != "GIF":
        return 1
    count = 1
    while count < limit:
        try:
            image.seek(count)
        except EOFError:
            break
        count += 1
    return count


def load_image(path, size: int, preprocess):
    """``decode_image`` of the file at ``path`` (a string tensor)."""
    import tensorflow as tf

    return decode_image(tf.io.read_file(path), size, preprocess)


def decode_image(encoded, size: int, preprocess):
    """Decode (JPEG, PNG, GIF, BMP), turn upright by its EXIF orientation, resize to size×size and preprocess: the
    one way an image enters an encoder (extraction, fine-tuning, the caption command and the exported model)."""
    import tensorflow as tf

    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    # Phone photos are stored as the sensor saw them; only the EXIF tag says which way is up.
    image = upright(tf.cast(image, tf.float32), exif_orientation(encoded))  # float32: oneDNN warns on uint8 turns
    return encoder_input(image, size, preprocess)


def encoder_input(image, size: int, preprocess, antialias: bool = True):
    """An upright RGB image (H×W×3, floats in [0, 255]) resized to size×size and preprocessed. ``antialias`` is off
    only in TensorFlow Lite, which has no antialiasing resize (the same pixels when an image is enlarged or kept)."""
    import tensorflow as tf

    return preprocess(tf.image.resize(image, (size, size), antialias=antialias))


def _image_dataset(paths: list[Path], size: int, preprocess, batch_size: int):
    """Batches of (names, preprocessed images); decode and resize run in parallel with the forward pass.

    An image that does not decode is dropped here (``ignore_errors``); the caller finds it by name
    from what did come through.
    """
    import tensorflow as tf

    def load(path):
        return tf.strings.split(path, "/")[-1], load_image(path, size, preprocess)

    names = tf.data.Dataset.from_tensor_slices([str(path) for path in paths])
    return (
        names.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .ignore_errors()
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )


class Extractor:
    """A frozen encoder with its pooling, ready to stream image files into a features file."""

    def __init__(
        self,
        encoder: Encoder,
        pooling: str,
        weights: str = "imagenet",
        image_size: int | None = None,
        model=None,
    ):
        """``model``: an already built image → features model (a fine-tuned encoder) instead of the registry's."""
        import keras
        import tensorflow as tf

        self.encoder, self.pooling, self.weights = encoder, pooling, weights
        self.size = image_size or encoder.input_size
        if model is None:
            backbone = encoder.build(weights, self.size)
            pooled = keras.layers.GlobalAveragePooling2D()(backbone.output) if pooling == "avg" else backbone.output
            model = keras.Model(backbone.input, pooled)
        self.model = model
        self.forward = tf.function(lambda images: self.model(images, training=False), reduce_retracing=True)

    def write(self, paths: list[Path], target: Path, batch_size: int, label: str | None = None) -> list[str]:
        """Write the features of ``paths`` to ``target``; returns the names of images that did not decode.
        ``label`` names the progress bar (by default the stage's).

        Memory stays flat whatever the number of images: batches stream from disk through the
        encoder into the HDF5 file, which grows one chunk per image.
        """
        shape = tuple(int(d) for d in self.model.output.shape[1:])
        written: list[str] = []
        with atomic_path(target) as temporary, h5py.File(temporary, "w") as store:
            features = store.create_dataset(
                "features", shape=(0, *shape), maxshape=(None, *shape), dtype="float16", chunks=(1, *shape)
            )
            store.attrs.update(
                encoder=self.encoder.name,
                weights=self.encoder.weights_identity(self.weights),
                weights_param=self.weights,
                input_size=self.size,
                pooling=self.pooling,
                preprocessing=self.encoder.preprocessing,
                machine=json.dumps(process.machine()),  # which CPU and kernels made these bits
            )
            images = _image_dataset(
                [path for path in paths if image_problem(path) is None], self.size, self.encoder.preprocess, batch_size
            )
            label = label or f"extract_features: {self.encoder.name}"
            with progress(total=len(paths), desc=label, unit="image") as bar:
                for names, batch in images:
                    values = self.forward(batch).numpy().astype(np.float16)
                    features.resize(len(written) + len(values), axis=0)
                    features[len(written) :] = values
                    written += [name.decode() for name in names.numpy()]
                    bar.update(len(values))
            store.create_dataset("image_ids", data=np.array(written, dtype=object), dtype=h5py.string_dtype())
        decoded = set(written)
        return [path.name for path in paths if path.name not in decoded]

    def features(self, paths: list[Path]) -> tuple[np.ndarray, dict[Path, str]]:
        """Features of the readable images among ``paths`` (in order), and why each other one failed."""
        import tensorflow as tf

        images, failures = [], {}
        for path in paths:
            problem = image_problem(path)
            if problem:
                failures[path] = problem
                continue
            try:
                images.append(load_image(str(path), self.size, self.encoder.preprocess))
            except (tf.errors.OpError, ValueError):
                failures[path] = "not a readable image"
        if not images:
            return np.zeros((0, *self.model.output.shape[1:]), np.float32), failures
        return self.forward(tf.stack(images)).numpy(), failures


def extract(
    encoder: Encoder,
    paths: list[Path],
    target: Path,
    pooling: str,
    batch_size: int,
    weights: str = "imagenet",
    image_size: int | None = None,
) -> list[str]:
    """Build the encoder and write the features of ``paths``; see ``Extractor.write``."""
    return Extractor(encoder, pooling, weights, image_size).write(paths, target, batch_size)


def extract_project(layout: Layout, encoder: str, settings: dict) -> tuple[Path, list[Path], list[str]]:
    """The extract_features stage on the project in ``layout``: the ``encoder``'s features of every image its split
    lists name, as the ``features`` params ``settings`` say. (The features file, the images read, the names of
    those that were not readable images.) Which machine made them goes to ``layout.machine_record`` too."""
    names = sorted({name for split in SPLITS for name in read_split_list(layout.split_list(split))})
    paths = [layout.images / name for name in names if (layout.images / name).is_file()]
    target = layout.features_file(encoder)
    options = (settings["pooling"], settings["batch_size"], str(settings["weights"]), settings["image_size"])
    unreadable = extract(encoders.get(encoder), paths, target, *options)
    write_text(layout.machine_record, json.dumps(process.machine(), indent=1) + "\n")
    return target, paths, unreadable


UNREADABLE = "not a readable features file (truncated or overwritten?)"
TABLE_BYTES = 256 << 20  # pooled features held in memory up to this size (50k images of 1280 channels)


class FeatureFile:
    """The read side of a features file, checked against the encoder the params name."""

    def __init__(self, path: Path, encoder: str):
        if not Path(path).exists():
            raise CaptionerError(f"features file {path} is missing; run the extract_features stage")
        self.path = Path(path)
        with artifacts.reading(path, UNREADABLE):
            self.store = h5py.File(path, "r")
        try:
            self._check(encoder)
        except BaseException:
            self.store.close()
            raise
        self.row_of = {name: row for row, name in enumerate(self.names)}

    def _check(self, encoder: str) -> None:
        """Read the attributes and image names, and refuse a file of another encoder or of the wrong shape."""
        with artifacts.reading(self.path, UNREADABLE):
            self.attrs = dict(self.store.attrs)
            held, self.pooling = str(self.attrs["encoder"]), str(self.attrs["pooling"])
            self._features = self.store["features"]
            self.names = list(self.store["image_ids"].asstr()[:])  # image file name of each row
        if held != encoder:
            raise CaptionerError(f"{self.path} holds {held} features, but params say encoder {encoder}")
        shape, dtype = self._features.shape, self._features.dtype
        if len(shape) not in (2, 4) or shape[0] != len(self.names) or dtype.kind != "f":
            what = f"features of shape {shape} ({dtype}) for {len(self.names)} images"
            raise artifacts.damaged(self.path, f"{what}; a features file holds N×C or N×H×W×C floats")

    @property
    def item_shape(self) -> tuple[int, ...]:
        """Per-image shape as stored: (C,) pooled, or H×W×C."""
        return tuple(self._features.shape[1:])

    def shape(self, pooled: bool) -> tuple[int, ...]:
        """Per-image shape that ``read`` returns: (C,) pooled, or (H·W, C) for the grid."""
        channels = self._features.shape[-1]
        if pooled:
            return (channels,)
        self.require_grid()
        return (int(np.prod(self._features.shape[1:-1])), channels)

    def require_grid(self) -> None:
        if self._features.ndim != 4:
            raise CaptionerError(
                f"attention needs the feature grid, but {self.path} holds {self.pooling}-pooled features: "
                "set features.pooling to grid"
            )

    def read(self, rows: np.ndarray, pooled: bool) -> np.ndarray:
        """float32 features of ``rows``, in that order; the grid is averaged when ``pooled``."""
        shape = self.shape(pooled)
        unique, inverse = np.unique(rows, return_inverse=True)
        out = np.empty((len(unique), *shape), dtype=np.float32)
        with artifacts.reading(self.path, "a feature row does not read (truncated?)"):
            for index, row in enumerate(unique):
                # One chunk per read: ~60x faster than h5py's fancy indexing over the same rows.
                values = self._features[row].astype(np.float32).reshape(-1, shape[-1])
                out[index] = values.mean(axis=0) if pooled else values
        return out[inverse]

    def reader(self, pooled: bool) -> Callable[[np.ndarray], np.ndarray]:
        """rows → features: pooled vectors from a table in memory while it fits ``TABLE_BYTES`` (Flickr8k's
        40 MB), else, like the grid, streamed from disk batch by batch: memory stays flat at COCO scale."""
        if not pooled or len(self.row_of) * self.shape(pooled=True)[0] * 4 > TABLE_BYTES:
            return lambda rows: self.read(rows, pooled=pooled)
        table = self.read(np.arange(len(self.row_of)), pooled=True)
        return table.__getitem__

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> FeatureFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def written_by(
    model, cached: FeatureFile, encoder: Encoder, paths: list[Path], batch_size: int, label: str
) -> Iterator[FeatureFile]:
    """What ``model`` (images → features or activations) makes of the images at ``paths``, sized and weighted as
    the ``cached`` features record, in a temporary file read like a features file."""
    pooling = "avg" if len(model.output.shape) == 2 else "grid"
    extractor = Extractor(encoder, pooling, str(cached.attrs["weights_param"]), int(cached.attrs["input_size"]), model)
    with tempfile.TemporaryDirectory(prefix="captioner-") as directory:
        target = Path(directory) / f"{encoder.name}.h5"
        unreadable = extractor.write(paths, target, batch_size, label)
        if unreadable:  # the cache read them, so the images changed under the run
            raise CaptionerError(f"{unreadable[0]} no longer decodes, though {cached.path} holds its features")
        with FeatureFile(target, encoder.name) as store:
            yield store
