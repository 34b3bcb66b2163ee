"""The shipped captioner: a SavedModel that captions encoded images with TensorFlow alone (no ``captioner``, no
repository), and a TensorFlow Lite file of the same graph.

Everything is inside: decoding the bytes, turning the image upright by its EXIF orientation, resizing and
preprocessing (``captioner.features.decode_image``, the pipeline's own), the encoder (frozen or fine-tuned), the
decoder or the ensemble, beam search (``captioner.decoding.Loops``) and the vocabulary. The serving signature:

- input ``images``: string [N], the encoded files' bytes (JPEG, PNG, GIF or BMP);
- outputs ``captions`` (string [N]), ``log_probs`` (float32 [N], the caption's summed log-probability) and
  ``errors`` (string [N]: "" for a captioned image, else why it was not; its caption is then "").

The TensorFlow Lite file takes decoded pixels (``caption_pixels``: uint8 [N, H, W, 3], upright) and returns each
image's words and log-probability: TensorFlow Lite has no built-in ops to decode images or run ``tf.data``. It
resizes without antialiasing (no such kernel; the same pixels when an image is enlarged or kept, slightly
different ones when it is shrunk).
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import tensorflow as tf

from captioner import CaptionerError, artifacts, decoding
from captioner.captioning import Captioner
from captioner.features import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, decode_image, encoder_input, image_problem
from captioner.files import atomic_path, write_text
from captioner.layout import Layout
from captioner.text import SPECIAL_TOKENS, Vocabulary

SAVED_MODEL, TFLITE_FILE, EXPORT_CARD = "saved_model", "captioner.tflite", "export.json"
SIGNATURE, INPUT = "serving_default", "images"  # encoded images → captions
PIXELS_SIGNATURE, PIXELS = "caption_pixels", "pixels"  # upright RGB images of one size → words (TensorFlow Lite)
MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG": "PNG", b"GIF8": "GIF", b"BM": "BMP"}  # how each format's files begin
NOT_AN_IMAGE = "not a JPEG, PNG, GIF or BMP image"
UNDECODABLE = "a corrupt image: it does not decode"
TOO_LARGE = f"over the {MAX_IMAGE_BYTES >> 20} MB an image may have"
TOO_MANY_PIXELS = f"its header claims over the {MAX_IMAGE_PIXELS // 1_000_000} million pixels an image may have"


class ExportedCaptioner(tf.Module):
    """A ``Captioner`` as one TensorFlow module: ``serve`` (the SavedModel's signature) and ``caption_pixels``
    (the TensorFlow Lite file's)."""

    def __init__(self, captioner: Captioner, beam_size: int, max_len: int, length_penalty: float):
        super().__init__(name="captioner")
        extractor = captioner.extractor
        self.encoder = _saveable(extractor.model)  # tracked: its variables are saved
        self.decoders = [member.decoder for member in captioner.members]
        decoding.check_length(captioner.decoder, max_len)
        self.loops = decoding.loops(captioner.decoder)
        self.size, self.preprocess, self.grid = extractor.size, extractor.encoder.preprocess, extractor.pooling
        tokens = captioner.trained.vocab.tokens
        self.words = tf.constant(["" if token in SPECIAL_TOKENS else token for token in tokens])  # specials: no word
        self.settings = (max_len, beam_size, float(length_penalty))
        # Both signatures call one traced function: the encoder and the beam search loop are traced once.
        preprocessed = tf.TensorSpec([None, self.size, self.size, 3], tf.float32)
        self.caption = tf.function(self._caption, input_signature=[preprocessed])
        self.serve = tf.function(self._serve, input_signature=[tf.TensorSpec([None], tf.string, name=INPUT)])
        # A batch of any size, not [1, ...]: with a static batch the TensorFlow Lite converter fixes the shrinking
        # batch of unfinished images inside the beam search loop at its first size.
        pixels = tf.TensorSpec([None, None, None, 3], tf.uint8, name=PIXELS)
        self.caption_pixels = tf.function(self._caption_pixels, input_signature=[pixels])

    def _serve(self, images):
        index, pixels = self._decodable(images)
        words, log_probs = self.caption(pixels)
        captions = tf.strings.strip(tf.strings.reduce_join(tf.where(words == "", "", words + " "), axis=1))
        slot = tf.tensor_scatter_nd_update(
            tf.fill(tf.shape(images), tf.size(index)), index[:, None], tf.range(tf.size(index))
        )
        errors = tf.where(slot < tf.size(index), "", _problem(images))
        return {
            "captions": tf.gather(tf.concat([captions, [""]], 0), slot),
            "log_probs": tf.gather(tf.concat([log_probs, [0.0]], 0), slot),
            "errors": errors,
        }

    def _caption_pixels(self, pixels):
        """TensorFlow Lite's signature: upright RGB images of one size → their captions' words (blanks after the
        last one)."""
        images = encoder_input(tf.cast(pixels, tf.float32), self.size, self.preprocess, antialias=False)
        words, log_probs = self.caption(images)
        return {"words": words, "log_probs": log_probs}

    def _decodable(self, images):
        """The index of each image that decodes (and is not too large), and those images preprocessed. ``tf.data``'s
        ``ignore_errors`` drops an image that fails instead of failing the batch; it only tries each decode, as a
        dataset built per call with the whole preprocessing in it cost ~0.6 s a call."""
        count = tf.shape(images)[0]

        def decodes(index, encoded):
            tf.debugging.assert_less_equal(tf.strings.length(encoded), MAX_IMAGE_BYTES)
            tf.debugging.assert_less_equal(
                claimed_pixels(encoded), tf.constant(MAX_IMAGE_PIXELS, tf.int64)
            )  # before decoding a bomb
            return index, tf.shape(tf.io.decode_image(encoded, channels=3, expand_animations=False))

        tried = tf.data.Dataset.from_tensor_slices((tf.range(count), images)).map(decodes).ignore_errors()
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
        return self._words(decoded["ids"]), decoded["log_prob"]

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


def claimed_pixels(encoded):
    """Width × height (int64) as a PNG, GIF or BMP header states it, 0 for other files: read before decoding, since a
    few-KB file can claim billions of pixels. (A JPEG's size sits after its other segments; TensorFlow's JPEG
    decoder refuses one over 2^29 pixels itself.)"""
    raw = tf.cast(tf.io.decode_raw(tf.strings.substr(encoded, 0, 26), tf.uint8), tf.int64)
    head = tf.pad(raw, [[0, 26 - tf.size(raw)]])

    def number(begin: int, width: int, little: bool):  # at most 2^31, so a product of two cannot overflow
        digits = [head[begin + k] for k in range(width)]
        return tf.minimum(sum(digit * 256**k for k, digit in enumerate(digits if little else digits[::-1])), 2**31)

    png, gif, bmp = (tf.strings.substr(encoded, 0, len(magic)) == magic for magic in (b"\x89PNG", b"GIF8", b"BM"))
    signed = tf.bitcast(tf.cast(head[22:26], tf.uint8), tf.int32)  # a BMP stored top-down gives a negative height
    height = tf.minimum(tf.abs(tf.cast(signed, tf.int64)), 2**31)
    sizes = [(png, number(16, 4, False) * number(20, 4, False)), (gif, number(6, 2, True) * number(8, 2, True))]
    sizes.append((bmp, number(18, 4, True) * height))
    return sum(tf.where(is_format, pixels, tf.constant(0, tf.int64)) for is_format, pixels in sizes)


def _problem(images):
    """Why each image would not decode, from its size and first bytes (the decoder says no more than that)."""
    known = tf.reduce_any(tf.stack([tf.strings.substr(images, 0, len(magic)) == magic for magic in MAGIC]), axis=0)
    length = tf.strings.length(images)
    pixels = tf.map_fn(claimed_pixels, images, fn_output_signature=tf.int64)
    problem = tf.where(
        known, tf.where(pixels > tf.constant(MAX_IMAGE_PIXELS, tf.int64), TOO_MANY_PIXELS, UNDECODABLE), NOT_AN_IMAGE
    )
    return tf.where(length == 0, "empty input", tf.where(length > MAX_IMAGE_BYTES, TOO_LARGE, problem))


def export_project(layout: Layout, settings: dict, members: list[str] = ()) -> dict:
    """The export stage on the project in ``layout``: its model (as an ensemble with the ``members`` named, if
    any) exported to ``layout.export``, decoding as the ``evaluate`` params ``settings`` say. The files' sizes in
    MB, also written to ``metrics/export.json``."""
    captioner = Captioner.load(layout.models, layout.members(members))
    decode_as = {key: settings[key] for key in ("beam_size", "max_len", "length_penalty")}
    card = export(captioner, layout.export, **decode_as)
    # To 0.1 MB: the TensorFlow Lite file's exact size moves by bytes from run to run (export/export.json has it).
    sizes = {f"{name}_mb": round(card[f"{name}_bytes"] / 2**20, 1) for name in ("saved_model", "tflite")}
    write_text(layout.export_sizes, json.dumps(sizes, indent=2) + "\n")
    return sizes


def export(captioner: Captioner, target: Path, beam_size: int, max_len: int, length_penalty: float) -> dict:
    """Write ``target``/ (all or nothing): the SavedModel, the TensorFlow Lite file and ``export.json`` (what was
    exported, and the files' sizes). Returns that card."""

    module = ExportedCaptioner(captioner, beam_size, max_len, length_penalty)
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
            "beam_size": beam_size,
            "max_len": max_len,
            "length_penalty": length_penalty,
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
    """The serving function of the model the export stage wrote to ``directory``; a missing or damaged one is one
    line naming it."""
    saved_model = Path(directory) / SAVED_MODEL
    if not (saved_model / "saved_model.pb").is_file():
        raise CaptionerError(
            f"{directory} holds no exported model ({SAVED_MODEL}/saved_model.pb); run `dvc repro export`, or fetch "
            "one with `dvc artifacts get <repo URL> captioner`"
        )
    with artifacts.reading(saved_model, "not a loadable SavedModel (truncated or corrupt?)"):
        return tf.saved_model.load(str(saved_model)).signatures[SIGNATURE]


def read_card(directory: Path) -> dict:
    """What the export stage recorded of the model in ``directory`` (``export.json``; empty if it has none)."""
    card = Path(directory) / EXPORT_CARD
    return artifacts.read_json(card) if card.is_file() else {}


def caption_files(directory: Path, paths: list[Path]) -> tuple[dict[Path, str], dict[Path, str]]:
    """Captions of the readable images among ``paths`` by the exported model in ``directory``, and why each other
    path failed (checked before it is read, as the repository's caption command does)."""
    serve = load(directory)
    failures = {path: problem for path in paths if (problem := image_problem(path))}
    readable = [path for path in paths if path not in failures]
    if not readable:
        return {}, failures
    outputs = serve(**{INPUT: tf.constant([path.read_bytes() for path in readable], dtype=tf.string)})
    captions = {}
    for path, caption, error in zip(readable, outputs["captions"].numpy(), outputs["errors"].numpy(), strict=True):
        if error:
            failures[path] = error.decode()
        else:
            captions[path] = caption.decode()
    return captions, failures
