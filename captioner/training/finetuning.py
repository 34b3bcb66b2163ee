"""Fine-tuning: the encoder and the decoder trained as one model, the encoder unfrozen from a named layer.

The frozen layers never change, so they run once per image before training
(``frozen_activations``); each step then takes the activations of a batch of images and *all*
their captions (``captions_per_image`` rows per image, all-padding rows where an image has
fewer), and runs the unfrozen layers once per image however many captions it has. That is what
makes fine-tuning affordable on a CPU. The saved captioner joins the whole encoder (image → the
features a decoder reads, layers shared with the trained part) to the decoder from
``captioner.model.decoder.Architecture.build``, so decoding, evaluation and the caption command use them exactly as
they use a frozen-encoder captioner.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from captioner import CaptionerError
from captioner.features.encoders import Encoder
from captioner.features.extraction import FeatureFile, written_by
from captioner.model.decoder import ENCODER, PerCaption
from captioner.training.batching import ImageCaptionBatches, batches_by_image
from captioner.training.config import TrainConfig
from captioner.training.trainer import TrainingRun


@dataclass
class SplitEncoder:
    """An encoder unfrozen from one layer on, in the two parts training uses and as the whole it saves.

    The layers before the split never change, so training runs them once per image
    (``frozen_activations``) and then steps only ``trainable``; ``full`` shares its layers.
    """

    frozen: keras.Model  # images → the activations entering the first unfrozen layer
    trainable: keras.Model  # those activations → features (named ENCODER, so ``parts`` finds it)
    full: keras.Model  # images → features: what the saved captioner, evaluate and `caption` run


def finetunable_encoder(
    encoder: Encoder, weights: str, image_size: int, pooling: str, finetune_from: str
) -> SplitEncoder:
    """``encoder`` (preprocessed image → features, pooled (C,) or the H×W×C grid as the features file
    holds them) trainable from ``finetune_from`` on, and split there.

    Layers before the named one stay frozen, and every BatchNorm layer stays frozen in inference
    mode (moving statistics, as when the features were cached).
    """
    backbone = encoder.build(weights, image_size)
    names = [layer.name for layer in backbone.layers]
    convolutions = [layer.name for layer in backbone.layers if isinstance(layer, layers.Conv2D)]
    if finetune_from not in names:
        raise CaptionerError(
            f"train.finetune_from {finetune_from!r} is not a layer of {encoder.name}; "
            f"layers near the end are e.g. {', '.join(convolutions[-4:])}"
        )
    backbone.trainable = True
    first = names.index(finetune_from)
    for index, layer in enumerate(backbone.layers):
        # A frozen BatchNorm is Keras 3's only way to keep it in inference mode: the outer model's
        # training=True reaches nested models whatever they were called with.
        layer.trainable = index >= first and not isinstance(layer, layers.BatchNormalization)

    def pool(grid):
        return layers.GlobalAveragePooling2D(name="pool")(grid) if pooling == "avg" else grid

    images = keras.Input((image_size, image_size, 3), name="images")
    split_at = backbone.get_layer(finetune_from).input
    try:
        trainable = keras.Model(split_at, pool(backbone.output), name=ENCODER)
    except ValueError:  # a skip connection crosses the split: the later layers read more than its input
        raise CaptionerError(
            f"train.finetune_from {finetune_from!r} splits a residual block of {encoder.name}; "
            f"name a layer that starts one, e.g. {', '.join(convolutions[-4:])}"
        ) from None
    frozen = keras.Model(backbone.input, split_at, name="frozen_" + ENCODER)
    return SplitEncoder(frozen, trainable, keras.Model(images, pool(backbone(images)), name=ENCODER))


def joint_model(encoder_model: keras.Model, decoder_model: keras.Model, captions_per_image: int) -> keras.Model:
    """[encoder inputs (B, …), tokens (B·captions_per_image, T)] → the decoder's outputs for every caption."""
    inputs = keras.Input(encoder_model.input.shape[1:], name="encoder_inputs")
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    features = encoder_model(inputs)
    if len(features.shape) == 4:  # the grid, as the attention decoder reads it: (H·W, C)
        features = layers.Reshape((-1, features.shape[-1]), name="flatten_grid")(features)
    features = PerCaption(captions_per_image, name="per_caption")(features)
    outputs = decoder_model([features, tokens])
    return keras.Model([inputs, tokens], outputs, name="captioner")


def frozen_activations(
    split: SplitEncoder, cached: FeatureFile, encoder: Encoder, images: Path, rows: list[int], batch_size: int
) -> contextlib.AbstractContextManager[FeatureFile]:
    """The frozen layers' output for the images at ``rows`` of the ``cached`` features (files in ``images``),
    computed once into a temporary file.

    Training then runs only the unfrozen layers each step, which is what makes fine-tuning cost
    little more than a frozen encoder (a Lite0 image through every layer costs ~10× its last block).
    """
    paths = [images / cached.names[row] for row in dict.fromkeys(rows)]
    return written_by(split.frozen, cached, encoder, paths, batch_size, f"train: frozen layers of {encoder.name}")


def activations_reader(activations: FeatureFile) -> Callable[[np.ndarray], np.ndarray]:
    """rows → float32 activations, each as the frozen layers made it (H×W×C)."""
    shape = activations.item_shape
    return lambda rows: activations.read(rows, pooled=False).reshape(len(rows), *shape)


def features_reader(trainable: keras.Model, activations: FeatureFile) -> Callable[[np.ndarray], np.ndarray]:
    """rows of ``activations`` → what the unfrozen layers make of them *now*, shaped as ``FeatureFile.read`` gives
    features: dev scores during fine-tuning without a pass of the whole encoder over the images."""
    read = activations_reader(activations)
    forward = tf.function(lambda batch: trainable(batch, training=False), reduce_retracing=True)

    def features(rows: np.ndarray) -> np.ndarray:
        values = forward(read(rows)).numpy()
        return values.reshape(len(rows), -1, values.shape[-1]) if values.ndim == 4 else values

    return features


def image_caption_batches(
    encoded: dict[str, tuple[np.ndarray, list[list[int]]]],
    cached: FeatureFile,
    activations: FeatureFile,
    batch_size: int,
    seeds: dict[str, int | None],
) -> tuple[dict[str, ImageCaptionBatches], int]:
    """``ImageCaptionBatches`` of frozen-layer activations per split, from ``training.encode_captions`` output
    (rows of the ``cached`` features), about ``batch_size`` captions a step; and the caption rows per image."""

    def activation_rows(rows: list[int]) -> np.ndarray:
        return np.array([activations.row_of[cached.names[row]] for row in rows])

    read = activations_reader(activations)
    return batches_by_image(encoded, read, activations.item_shape, batch_size, seeds, activation_rows)


@contextlib.contextmanager
def finetuned_run(
    model: keras.Model,
    config: TrainConfig,
    cached: FeatureFile,
    encoded: dict[str, tuple[np.ndarray, list[list[int]]]],
    encoder: Encoder,
    strategy: tf.distribute.Strategy,
    images: Path,
) -> Iterator[TrainingRun]:
    """What fine-tuning from ``config.finetune_from`` trains: ``encoder``'s unfrozen layers joined to the decoder
    ``model``, on image-grouped batches of the frozen layers' activations (computed once, into a temporary file
    that lives as long as the run; the images are read from the folder ``images``). Encoder weights and input size
    are those the ``cached`` features were made with; ``encoded`` holds each split's caption rows of ``cached``."""
    pooling, batch_size = "grid" if config.decoder.reads_grid(cached.pooling) else "avg", config.batch_size
    with strategy.scope():
        split = finetunable_encoder(
            encoder, str(cached.attrs["weights_param"]), int(cached.attrs["input_size"]), pooling, config.finetune_from
        )
    print(f"train: fine-tuning {encoder.name} from layer {config.finetune_from}")
    image_rows = [row for rows, _ in encoded.values() for row in rows]
    with frozen_activations(split, cached, encoder, images, image_rows, batch_size) as activations:
        seeds = {"train": config.seed, "dev": None}
        batches, per_image = image_caption_batches(encoded, cached, activations, batch_size, seeds)
        with strategy.scope():
            trained = joint_model(split.trainable, model, per_image)
        saved = joint_model(split.full, model, per_image)
        yield TrainingRun(trained, saved, batches, activations, features_reader(split.trainable, activations))
