"""The shipped captioner: a SavedModel that captions encoded images with TensorFlow alone (no ``captioner``, no
repository), and a TensorFlow Lite file of the same graph.

Everything is inside: decoding the bytes, turning the image upright by its EXIF orientation, resizing and
preprocessing (``captioner.features.extraction.decode_image``, the pipeline's own), the encoder (frozen or fine-tuned),
the decoder or the ensemble, beam search (``captioner.model.decoding.Loops``) and the vocabulary. The serving signature:

- input ``images``: string [N], the encoded files' bytes (JPEG, PNG, GIF or BMP);
- outputs ``captions`` (string [N]), ``log_probs`` (float32 [N], the caption's summed log-probability) and
  ``errors`` (string [N]: "" for a captioned image, else why it was not; its caption is then "").

The TensorFlow Lite file takes decoded pixels (``caption_pixels``: uint8 [N, H, W, 3], upright) and returns each
image's words and log-probability, and ``errors`` (``BAD_PIXELS`` for pixels of another shape): TensorFlow Lite has
no built-in ops to decode images or run ``tf.data``. It resizes without antialiasing (no such kernel; the same pixels
when an image is enlarged or kept, slightly different ones when it is shrunk).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path

import tensorflow as tf

from captioner import CaptionerError, artifacts
from captioner.captioning import CHUNK, Captioner
from captioner.features.extraction import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, decode_image, encoder_input, image_problem
from captioner.files import atomic_path, write_text
from captioner.layout import Layout
from captioner.model import decoding
from captioner.model.decoding import DecodeSettings
from captioner.text import SPECIAL_TOKENS, Vocabulary

SAVED_MODEL, TFLITE_FILE, EXPORT_CARD = "saved_model", "captioner.tflite", "export.json"
SIGNATURE, INPUT = "serving_default", "images"  # encoded images → captions
OUTPUTS = {"captions": tf.string, "log_probs": tf.float32, "errors": tf.string}
PIXELS_SIGNATURE, PIXELS = "caption_pixels", "pixels"  # upright RGB images of one size → words (TensorFlow Lite)
MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG": "PNG", b"GIF8": "GIF", b"BM": "BMP", b"RIFF": "WebP"}  # how files begin
NOT_AN_IMAGE = "not a JPEG, PNG, GIF, BMP or WebP image"
UNDECODABLE = "a corrupt image: it does not decode"
TOO_LARGE = f"over the {MAX_IMAGE_BYTES >> 20} MB an image may have"
BAD_PIXELS = f"pixels must be uint8 [N, H, W, 3] with 1 ≤ H×W ≤ {MAX_IMAGE_PIXELS // 1_000_000} million"
TOO_MANY_PIXELS = (
    f"its headers claim over the {MAX_IMAGE_PIXELS // 1_000_000} million pixels an image may have (all frames)"
)


class ExportedCaptioner(tf.Module):
    """A ``Captioner`` as one TensorFlow module: ``serve`` (the SavedModel's signature) and ``caption_pixels``
    (the TensorFlow Lite file's)."""

    def __init__(self, captioner: Captioner, settings: DecodeSettings):
        super().__init__(name="captioner")
        extractor = captioner.extractor
        self.encoder = _saveable(extractor.model)  # tracked: its variables are saved
        self.decoders = [member.model for member in captioner.members]  # tracked: their variables are saved
        decoding.check_length(captioner.stepper, settings.max_len)
        self.loops = decoding.loops(captioner.stepper)
        self.size, self.preprocess, self.grid = extractor.size, extractor.encoder.preprocess, extractor.pooling
        tokens = captioner.trained.vocab.tokens
        self.words = tf.constant(["" if token in SPECIAL_TOKENS else token for token in tokens])  # specials: no word
        self.settings = (settings.max_len, settings.beam_size, float(settings.length_penalty))
        # Both signatures call one traced function (preprocessed images → ids, log-probabilities): the encoder and the
        # beam search loop are traced once.
        preprocessed = tf.TensorSpec([None, self.size, self.size, 3], tf.float32)
        self.caption = tf.function(self._caption, input_signature=[preprocessed])
        self.serve = tf.function(self._serve, input_signature=[tf.TensorSpec([None], tf.string, name=INPUT)])
        # A batch of any size, not [1, ...]: with a static batch the TensorFlow Lite converter fixes the shrinking
        # batch of unfinished images inside the beam search loop at its first size.
        # Channels too: a static 3 would be folded into the graph, and TensorFlow Lite takes any shape it is given.
        pixels = tf.TensorSpec([None, None, None, None], tf.uint8, name=PIXELS)
        self.caption_pixels = tf.function(self._caption_pixels, input_signature=[pixels])

    def _serve(self, images):
        claims = claimed_pixels_each(images)  # walked once: the decode check and the reasons both read them
        index, pixels = self._decodable(images, claims)
        # Not the encoder on an empty batch: oneDNN's batch norm (TensorFlow's default kernels on AVX-512 VNNI CPUs)
        # fails on one, and so would the whole request where no image decodes.
        nothing = (tf.zeros([0, self.settings[0]], tf.int32), tf.zeros([0], tf.float32))
        ids, log_probs = tf.cond(tf.size(index) > 0, lambda: self.caption(pixels), lambda: nothing)
        words = self._words(ids)
        captions = tf.strings.strip(tf.strings.reduce_join(tf.where(words == "", "", words + " "), axis=1))
        slot = tf.tensor_scatter_nd_update(
            tf.fill(tf.shape(images), tf.size(index)), index[:, None], tf.range(tf.size(index))
        )
        errors = tf.where(slot < tf.size(index), "", _problem(images, claims))
        return {
            "captions": tf.gather(tf.concat([captions, [""]], 0), slot),
            "log_probs": tf.gather(tf.concat([log_probs, [0.0]], 0), slot),
            "errors": errors,
        }

    def _caption_pixels(self, pixels):
        """TensorFlow Lite's signature: upright RGB images of one size → their captions' words (blanks after the
        last one), and an error for each where the pixels are not [N, H, W, 3] with 1 ≤ H×W ≤ the pixel limit
        (TensorFlow Lite lets a caller resize the input to any shape)."""
        shape = tf.shape(pixels)
        fits = tf.logical_and(tf.equal(shape[3], 3), tf.logical_and(shape[1] >= 1, shape[2] >= 1))
        fits = tf.logical_and(fits, tf.cast(shape[1], tf.int64) * tf.cast(shape[2], tf.int64) <= MAX_IMAGE_PIXELS)
        # Pixels of another shape pass through as three channels of at least 1×1, and their words are blanked after:
        # TensorFlow Lite prepares every branch of a cond for the shapes it is given, so none would keep them out.
        grow = [
            [0, 0],
            [0, tf.maximum(1 - shape[1], 0)],
            [0, tf.maximum(1 - shape[2], 0)],
            [0, tf.maximum(1 - shape[3], 0)],
        ]
        padded = tf.pad(tf.cast(pixels, tf.float32), grow)  # float32: TensorFlow Lite pads no uint8
        rgb = tf.gather(padded, tf.minimum(tf.range(3), tf.shape(padded)[3] - 1), axis=3)
        images = encoder_input(rgb, self.size, self.preprocess, antialias=False)
        ids, log_probs = self.caption(images)
        ids = ids * tf.cast(fits, ids.dtype)  # all padding (Vocabulary.pad_id is 0): no word
        # A gather, not tf.where: TensorFlow Lite's built-in select takes no strings.
        errors = tf.gather(tf.constant(["", BAD_PIXELS]), tf.fill([shape[0]], 1 - tf.cast(fits, tf.int32)))
        log_probs = tf.where(fits, log_probs, tf.fill(tf.shape(log_probs), float("nan")))
        return {"words": self._words(ids), "log_probs": log_probs, "errors": errors}

    def _decodable(self, images, claims):
        """The index of each image that decodes (and is not too large, by its ``claims``: ``claimed_pixels_each``),
        and those images preprocessed. ``tf.data``'s
        ``ignore_errors`` drops an image that fails instead of failing the batch; it only tries each decode, as a
        dataset built per call with the whole preprocessing in it cost ~0.6 s a call."""
        count = tf.shape(images)[0]

        def decodes(index, encoded, claimed):
            tf.debugging.assert_less_equal(tf.strings.length(encoded), MAX_IMAGE_BYTES)
            tf.debugging.assert_less_equal(claimed, tf.constant(MAX_IMAGE_PIXELS, tf.int64))  # before decoding a bomb
            tf.debugging.assert_non_negative(claimed)  # a JPEG or GIF whose structure does not walk
            return index, tf.shape(tf.io.decode_image(encoded, channels=3, expand_animations=False))

        tried = tf.data.Dataset.from_tensor_slices((tf.range(count), images, claims)).map(decodes).ignore_errors()
        none = (tf.zeros([0], tf.int32), tf.zeros([0, 3], tf.int32))
        index, _ = tried.batch(tf.cast(tf.maximum(count, 1), tf.int64)).reduce(none, lambda _, batch: batch)
        load = partial(decode_image, size=self.size, preprocess=self.preprocess)
        pixels = tf.map_fn(load, tf.gather(images, index), fn_output_signature=tf.TensorSpec([self.size, self.size, 3]))
        return index, pixels

    def _caption(self, pixels):
        features = self.encoder(pixels, training=False)
        if self.grid == "grid":
            features = tf.reshape(features, [tf.shape(features)[0], -1, features.shape[-1]])
        max_len, beam_size, length_penalty = self.settings
        decoded = self.loops.beam_search(features, max_len, beam_size, length_penalty)
        return decoded["ids"], decoded["log_prob"]

    def _words(self, ids):
        """Each row's words (max_len strings): up to its first end token, specials blank (as ``Vocabulary.decode``
        leaves them out)."""
        before_end = tf.cumsum(tf.cast(ids == Vocabulary.end_id, tf.int32), axis=1) == 0
        return tf.gather(self.words, tf.where(before_end, ids, Vocabulary.pad_id))


def _saveable(model):
    """``model`` with the same weights and its layers renamed where TensorFlow's SavedModel refuses a variable's name:
    the EfficientNet-Lite layers keep the torch checkpoint's keys, which begin with an underscore."""
    import keras

    def renamed(layer):
        config = layer.get_config() | {"name": f"layer{layer.name}" if layer.name.startswith("_") else layer.name}
        return layer.__class__.from_config(config)

    clone = keras.models.clone_model(model, clone_function=renamed, recursive=True)  # a fine-tuned encoder nests one
    clone.set_weights(model.get_weights())
    return clone


UNKNOWN_SIZE = -1  # claimed_pixels of a JPEG or GIF whose structure does not walk: refused, as undecodable
_NOT_FOUND = -2  # the JPEG walk's pixels until it reaches the frame header or gives up
_WALK_STEPS = 1 << 18  # markers or blocks walked at most: a 64 MB GIF has at most this many data sub-blocks


def claimed_pixels(encoded):
    """The pixels (int64) that decoding ``encoded`` would produce, as its headers state them, read before decoding
    (a few-KB file can claim billions): width × height for PNG, BMP and WebP; a JPEG's from its frame header, found
    by walking its segments; a GIF's canvas times its frames (TensorFlow decodes them all), counted by walking its
    blocks until they alone are too many. ``UNKNOWN_SIZE`` for a JPEG or GIF that does not walk; 0 for other files."""
    raw = tf.cast(tf.io.decode_raw(encoded, tf.uint8), tf.int64)
    length = tf.size(raw, out_type=tf.int64)
    padded = tf.concat([raw, tf.zeros([32], tf.int64)], 0)  # fixed-offset fields past a short file read as 0

    def at(index):
        return padded[tf.clip_by_value(tf.cast(index, tf.int64), 0, length + 31)]

    def number(begin, width: int, little: bool):  # at most 2^31, so a product of two cannot overflow
        digits = [at(begin + k) for k in range(width)]
        return tf.minimum(sum(digit * 256**k for k, digit in enumerate(digits if little else digits[::-1])), 2**31)

    def holds(begin: int, text: bytes):
        return tf.reduce_all(tf.stack([at(begin + k) == byte for k, byte in enumerate(text)]))

    starts = {name: holds(0, magic) for magic, name in MAGIC.items()}
    height = tf.minimum(tf.abs(tf.cast(tf.bitcast(tf.cast(padded[22:26], tf.uint8), tf.int32), tf.int64)), 2**31)
    lossless_bits = number(21, 4, True)
    webp = [  # its first chunk: lossy (VP8), lossless (VP8L) or extended (VP8X, the canvas)
        (holds(8, b"WEBPVP8 "), (number(26, 2, True) % 16384) * (number(28, 2, True) % 16384)),
        (holds(8, b"WEBPVP8L"), (lossless_bits % 16384 + 1) * (lossless_bits // 16384 % 16384 + 1)),
        (holds(8, b"WEBPVP8X"), (number(24, 3, True) + 1) * (number(27, 3, True) + 1)),
    ]
    sizes = [
        (starts["PNG"], number(16, 4, False) * number(20, 4, False)),
        (starts["BMP"], number(18, 4, True) * height),  # a BMP stored top-down gives a negative height
        *((tf.logical_and(starts["WebP"], is_chunk), pixels) for is_chunk, pixels in webp),
    ]
    plain = sum(tf.where(is_format, pixels, tf.constant(0, tf.int64)) for is_format, pixels in sizes)
    return tf.case(
        [
            (starts["JPEG"], lambda: _jpeg_pixels(at, number, length)),
            (starts["GIF"], lambda: _gif_pixels(at, number, length)),
        ],
        default=lambda: plain,
    )


def _jpeg_pixels(at, number, length):
    """Walks a JPEG's segments from its start marker to the frame header (SOF0…SOF15 but DHT, JPG and DAC)."""
    frame_markers = tf.constant(
        [0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF], tf.int64
    )

    def step(position, pixels, steps):
        marker = at(position + 1)
        if_frame = number(position + 5, 2, False) * number(position + 7, 2, False)
        found = tf.reduce_any(marker == frame_markers)
        lost = tf.logical_or(at(position) != 0xFF, tf.logical_or(marker == 0xDA, marker == 0xD9))  # scan or end first
        standalone = tf.logical_or(marker == 0x01, tf.logical_and(marker >= 0xD0, marker <= 0xD8))
        one, two = tf.constant(1, tf.int64), tf.constant(2, tf.int64)
        advance = tf.where(marker == 0xFF, one, tf.where(standalone, two, 2 + number(position + 2, 2, False)))
        pixels = tf.where(found, if_frame, tf.where(lost, tf.constant(UNKNOWN_SIZE, tf.int64), pixels))
        return position + advance, pixels, steps + 1

    def walking(position, pixels, steps):
        return tf.logical_and(tf.logical_and(pixels == _NOT_FOUND, position < length), steps < _WALK_STEPS)

    start = (tf.constant(2, tf.int64), tf.constant(_NOT_FOUND, tf.int64), tf.constant(0, tf.int64))
    _, pixels, _ = tf.while_loop(walking, step, start)
    return tf.where(pixels == _NOT_FOUND, tf.constant(UNKNOWN_SIZE, tf.int64), pixels)


def _gif_pixels(at, number, length):
    """A GIF's canvas times the frames its blocks hold: extensions and frames, each followed by data sub-blocks."""
    canvas = number(6, 2, True) * number(8, 2, True)
    limit = tf.constant(MAX_IMAGE_PIXELS, tf.int64) // tf.maximum(canvas, 1) + 1  # frames enough to refuse it

    def table(packed):  # a colour table's bytes, from the packed field of a screen or frame descriptor
        entries = tf.bitwise.left_shift(tf.constant(2, tf.int64), packed % 8)
        return tf.where(packed >= 128, 3 * entries, tf.constant(0, tf.int64))

    def step(position, frames, in_blocks, ended, steps):
        size, block = at(position), at(position)
        after_block = position + 2, position + 11 + table(at(position + 9))
        position = tf.where(
            in_blocks,
            position + size + 1,
            tf.where(block == 0x21, after_block[0], tf.where(block == 0x2C, after_block[1], position)),
        )
        ended = tf.logical_and(tf.logical_not(in_blocks), tf.logical_and(block != 0x21, block != 0x2C))
        frames = frames + tf.cast(tf.logical_and(tf.logical_not(in_blocks), block == 0x2C), tf.int64)
        in_blocks = tf.where(in_blocks, size != 0, tf.logical_not(ended))
        return position, frames, in_blocks, ended, steps + 1

    def walking(position, frames, in_blocks, ended, steps):
        going = tf.logical_and(tf.logical_not(ended), position < length)
        return tf.logical_and(going, tf.logical_and(frames < limit, steps < _WALK_STEPS))

    start = (
        13 + table(at(10)),
        tf.constant(0, tf.int64),
        tf.constant(False),
        tf.constant(False),
        tf.constant(0, tf.int64),
    )
    _, frames, _, _, steps = tf.while_loop(walking, step, start)
    return tf.where(steps >= _WALK_STEPS, tf.constant(UNKNOWN_SIZE, tf.int64), canvas * tf.maximum(frames, 1))


def claimed_pixels_each(images):
    """``claimed_pixels`` of each encoded image (int64 [N]); 0 for one over the size limit, not walked: its size is
    its reason."""

    def claimed(encoded):
        small = tf.strings.length(encoded) <= MAX_IMAGE_BYTES
        return tf.cond(small, lambda: claimed_pixels(encoded), lambda: tf.constant(0, tf.int64))

    return tf.map_fn(claimed, images, fn_output_signature=tf.int64)


def _problem(images, claims):
    """Why each image would not decode, from its size, first bytes and ``claims`` (``claimed_pixels_each``): the
    decoder says no more than that."""
    known = tf.reduce_any(tf.stack([tf.strings.substr(images, 0, len(magic)) == magic for magic in MAGIC]), axis=0)
    length = tf.strings.length(images)
    problem = tf.where(
        known, tf.where(claims > tf.constant(MAX_IMAGE_PIXELS, tf.int64), TOO_MANY_PIXELS, UNDECODABLE), NOT_AN_IMAGE
    )
    return tf.where(length == 0, "empty input", tf.where(length > MAX_IMAGE_BYTES, TOO_LARGE, problem))


def export_project(layout: Layout, settings: DecodeSettings, members: list[str] = ()) -> dict:
    """The export stage on the project in ``layout``: its model (as an ensemble with the ``members`` named, if
    any) exported to ``layout.export``, decoding as ``settings`` say. The files' sizes in MB, also written to
    ``metrics/export.json``."""
    captioner = Captioner.load(layout.models, layout.members(members))
    card = export(captioner, layout.export, settings)
    # To 0.1 MB: the TensorFlow Lite file's exact size moves by bytes from run to run (export/export.json has it).
    sizes = {f"{name}_mb": round(card[f"{name}_bytes"] / 2**20, 1) for name in ("saved_model", "tflite")}
    write_text(layout.export_sizes, json.dumps(sizes, indent=2) + "\n")
    return sizes


def export(captioner: Captioner, target: Path, settings: DecodeSettings) -> dict:
    """Write ``target``/ (all or nothing): the SavedModel, the TensorFlow Lite file and ``export.json`` (what was
    exported, and the files' sizes). Returns that card."""

    module = ExportedCaptioner(captioner, settings)
    with atomic_path(target) as temporary:
        temporary.mkdir()
        signatures = {SIGNATURE: module.serve, PIXELS_SIGNATURE: module.caption_pixels}
        tf.saved_model.save(module, str(temporary / SAVED_MODEL), signatures=signatures)
        _without_random_id(temporary / SAVED_MODEL / "fingerprint.pb")
        tflite = _tflite(module)
        (temporary / TFLITE_FILE).write_bytes(tflite)
        card = {
            "signature": SIGNATURE,
            "input": INPUT,
            "outputs": ["captions", "log_probs", "errors"],
            "beam_size": settings.beam_size,
            "max_len": settings.max_len,
            "length_penalty": settings.length_penalty,
            "dataset": captioner.trained.card.get("dataset"),  # caption --export says when it was a toy one
            "encoder": captioner.trained.card["encoder"],
            "decoder": captioner.trained.spec.arch,
            "ensemble_members": len(captioner.members),
            "saved_model_bytes": sum(f.stat().st_size for f in (temporary / SAVED_MODEL).rglob("*") if f.is_file()),
            "tflite_bytes": len(tflite),
        }
        (temporary / EXPORT_CARD).write_text(json.dumps(card, indent=1) + "\n")
    return card


def _without_random_id(fingerprint: Path) -> None:
    """The SavedModel's fingerprint with its random ``uuid`` replaced by its content checksum, so the same model
    exports to the same bytes (DVC sees no change)."""
    from tensorflow.core.protobuf.fingerprint_pb2 import FingerprintDef

    proto = FingerprintDef.FromString(fingerprint.read_bytes())
    proto.uuid = str(proto.saved_model_checksum)
    fingerprint.write_bytes(proto.SerializeToString())


def _tflite(module: ExportedCaptioner) -> bytes:
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    # The weights as constants: TensorFlow Lite leaves variables read inside a loop uninitialised.
    function = module.caption_pixels.get_concrete_function()
    frozen = convert_variables_to_constants_v2(function)
    holder = tf.Module()  # the frozen graph under the signature's own input and output names
    holder.caption_pixels = tf.function(
        lambda pixels: tf.nest.pack_sequence_as(function.structured_outputs, frozen(pixels)),
        input_signature=module.caption_pixels.input_signature,
    )
    function = holder.caption_pixels.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], holder)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no TensorFlow ops: any interpreter runs it
    return converter.convert()


def load(directory: Path):
    """The serving function of the model the export stage wrote to ``directory``; a missing or damaged one, or one
    whose signature is not this captioner's, is one line naming it."""
    saved_model = Path(directory) / SAVED_MODEL
    if not (saved_model / "saved_model.pb").is_file():
        raise CaptionerError(
            f"{directory} holds no exported model ({SAVED_MODEL}/saved_model.pb); run `dvc repro export`, or fetch "
            "one with `dvc artifacts get <repo URL> captioner`"
        )
    with artifacts.reading(saved_model, "not a loadable SavedModel (truncated or corrupt?)"):
        signatures = tf.saved_model.load(str(saved_model)).signatures
    serve = signatures.get(SIGNATURE)
    inputs = serve.structured_input_signature[1] if serve is not None else {}
    outputs = serve.structured_outputs if serve is not None else {}
    expected = tf.TensorSpec([None], tf.string)
    if (
        list(inputs) != [INPUT]
        or not inputs[INPUT].is_compatible_with(expected)
        or inputs[INPUT].dtype != tf.string
        or set(outputs) != set(OUTPUTS)
        or any(outputs[name].dtype != dtype for name, dtype in OUTPUTS.items())
    ):
        wanted = ", ".join(f"{name} ({dtype.name})" for name, dtype in OUTPUTS.items())
        raise CaptionerError(
            f"{saved_model} is not a captioner's export: its {SIGNATURE!r} signature must take {INPUT} (string [N]) "
            f"and return {wanted}"
        )
    return serve


def read_card(directory: Path) -> dict:
    """What the export stage recorded of the model in ``directory`` (``export.json``; empty if it has none)."""
    card = Path(directory) / EXPORT_CARD
    return artifacts.read_json(card) if card.is_file() else {}


def caption_files(directory: Path, paths: Iterable[Path]) -> Iterator[tuple[Path, str, str | None]]:
    """``(path, caption, why it has none or None)`` of each path in order, by the exported model in ``directory``,
    ``CHUNK`` images a request (memory flat however many); a path is checked before it is read, as the
    repository's caption command does."""
    serve, paths = load(directory), iter(paths)
    while chunk := list(itertools.islice(paths, CHUNK)):
        failures = {path: problem for path in chunk if (problem := image_problem(path))}
        readable = [path for path in chunk if path not in failures]
        answers = {}
        if readable:
            outputs = serve(**{INPUT: tf.constant([path.read_bytes() for path in readable], dtype=tf.string)})
            captions, errors = outputs["captions"].numpy(), outputs["errors"].numpy()
            for path, caption, error in zip(readable, captions, errors, strict=True):
                answers[path] = (caption.decode(), error.decode() or None)
        for path in chunk:
            yield (path, "", failures[path]) if path in failures else (path, *answers[path])
