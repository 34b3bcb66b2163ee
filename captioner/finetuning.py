"""Fine-tuning: the encoder and the decoder trained as one model on images, the encoder unfrozen from a named layer.

The joint model takes a batch of images and *all* their captions (``captions_per_image`` rows per
image, all-padding rows where an image has fewer): each image goes through the encoder once per
step however many captions it has, which is what makes fine-tuning affordable on a CPU.
Its two parts stay separate models — ``encoder`` (image → the features a decoder reads) and the
decoder from ``captioner.decoder.build`` — so decoding, evaluation and the caption command use
them exactly as they use a frozen-encoder captioner.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from captioner.encoders import Encoder
from captioner.features import Extractor, FeatureFile, load_image
from captioner.stage import StageError

ENCODER = "encoder"


def finetunable_encoder(encoder: Encoder, weights: str, image_size: int, pooling: str, finetune_from: str):
    """Preprocessed image → features (pooled (C,) or the H×W×C grid, as the features file holds them),
    trainable from ``finetune_from`` on.

    Layers before the named one stay frozen, and every BatchNorm layer stays frozen in inference
    mode (moving statistics, as when the features were cached).
    """
    backbone = encoder.build(weights, image_size)
    names = [layer.name for layer in backbone.layers]
    if finetune_from not in names:
        convolutions = [layer.name for layer in backbone.layers if isinstance(layer, layers.Conv2D)]
        raise StageError(
            f"train.finetune_from {finetune_from!r} is not a layer of {encoder.name}; "
            f"layers near the end are e.g. {', '.join(convolutions[-4:])}"
        )
    backbone.trainable = True
    first = names.index(finetune_from)
    for index, layer in enumerate(backbone.layers):
        # A frozen BatchNorm is Keras 3's only way to keep it in inference mode: the outer model's
        # training=True reaches nested models whatever they were called with.
        layer.trainable = index >= first and not isinstance(layer, layers.BatchNormalization)
    images = keras.Input((image_size, image_size, 3), name="images")
    grid = backbone(images)
    features = layers.GlobalAveragePooling2D(name="pool")(grid) if pooling == "avg" else grid
    return keras.Model(images, features, name=ENCODER)


def joint_model(encoder_model: keras.Model, decoder_model: keras.Model, captions_per_image: int) -> keras.Model:
    """[images (B, …), tokens (B·captions_per_image, T)] → the decoder's outputs for every caption."""
    images = keras.Input(encoder_model.input.shape[1:], name="images")
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    features = encoder_model(images)
    if len(features.shape) == 4:  # the grid, as the attention decoder reads it: (H·W, C)
        features = layers.Reshape((-1, features.shape[-1]), name="flatten_grid")(features)
    features = ops.repeat(features, captions_per_image, axis=0)
    outputs = decoder_model([features, tokens])
    return keras.Model([images, tokens], outputs, name=decoder_model.name.replace("_captioner", "_finetuned"))


def parts(model: keras.Model) -> tuple[keras.Model | None, keras.Model]:
    """(fine-tuned encoder or None, decoder) of a saved captioner model."""
    names = {layer.name for layer in model.layers}
    if ENCODER not in names:
        return None, model
    decoder_model = next(layer for layer in model.layers if layer.name.endswith("_captioner"))
    return model.get_layer(ENCODER), decoder_model


def image_batches(
    paths: list[Path],
    sequences: list[list[list[int]]],
    image_size: int,
    preprocess,
    captions_per_image: int,
    images_per_batch: int,
    seed: int | None = None,
) -> tf.data.Dataset:
    """(images, tokens) batches: ``images_per_batch`` decoded images and their captions, flattened.

    ``sequences[i]`` holds the token ids of image i's captions; each image contributes exactly
    ``captions_per_image`` token rows (all padding where it has fewer), and every batch is padded
    only to its own longest caption.
    """
    longest = max(len(caption) for captions in sequences for caption in captions)
    table = np.zeros((len(paths), captions_per_image, longest), dtype=np.int32)
    for image, captions in enumerate(sequences):
        for row, caption in enumerate(captions[:captions_per_image]):
            table[image, row, : len(caption)] = caption

    def load(path, tokens):
        return load_image(path, image_size, preprocess), tokens

    def flatten(images, tokens):
        tokens = tf.reshape(tokens, (-1, longest))
        width = tf.reduce_max(tf.reduce_sum(tf.cast(tokens != 0, tf.int32), axis=1))
        return images, tokens[:, :width]

    dataset = tf.data.Dataset.from_tensor_slices(([str(path) for path in paths], table))
    if seed is not None:
        dataset = dataset.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    return (
        dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(images_per_batch)
        .map(flatten)
        .prefetch(2)
    )


def captions_by_image(rows: np.ndarray, sequences: list[list[int]]) -> tuple[list[int], list[list[list[int]]]]:
    """Group ``training.encode_captions`` output by image: (feature rows in first-seen order, captions of each)."""
    grouped: dict[int, list[list[int]]] = {}
    for row, sequence in zip(rows.tolist(), sequences, strict=True):
        grouped.setdefault(row, []).append(sequence)
    return list(grouped), list(grouped.values())


def image_caption_batches(
    splits: dict[str, tuple[np.ndarray, list[list[int]]]],
    image_path: Callable[[int], Path],
    encoder: Encoder,
    image_size: int,
    batch_size: int,
    seeds: dict[str, int | None],
) -> tuple[dict[str, tf.data.Dataset], int]:
    """``image_batches`` per split from ``training.encode_captions`` output (feature rows, token ids),
    about ``batch_size`` captions a step; and the captions per image they were padded to."""
    grouped = {split: captions_by_image(rows, sequences) for split, (rows, sequences) in splits.items()}
    # Every image contributes this many caption rows per step (empty, fully masked rows where it has fewer).
    per_image = max(len(captions) for _, groups in grouped.values() for captions in groups)
    batches = {
        split: image_batches(
            [image_path(row) for row in image_rows],
            groups,
            image_size,
            encoder.preprocess,
            per_image,
            max(1, batch_size // per_image),
            seeds[split],
        )
        for split, (image_rows, groups) in grouped.items()
    }
    return batches, per_image


@contextlib.contextmanager
def features_seen_by(
    encoder_model: keras.Model | None, cached: FeatureFile, encoder: Encoder, paths: list[Path], batch_size: int
) -> Iterator[FeatureFile]:
    """The features the decoder of a captioner reads for the images at ``paths``: the cached file when
    its encoder was frozen (``encoder_model`` None), else a temporary file the fine-tuned encoder
    writes, read like the cached one."""
    if encoder_model is None:
        yield cached
        return
    pooling = "avg" if len(encoder_model.output.shape) == 2 else "grid"
    extractor = Extractor(
        encoder, pooling, str(cached.attrs["weights_param"]), int(cached.attrs["input_size"]), model=encoder_model
    )
    with tempfile.TemporaryDirectory(prefix="finetuned-features-") as directory:
        target = Path(directory) / f"{encoder.name}.h5"
        extractor.write(paths, target, batch_size)
        with FeatureFile(target, encoder.name) as store:
            yield store
