"""Fine-tuning speed: training steps on cached frozen-layer activations vs on images through the whole encoder.

    dvc exp run … (a Flickr8k workspace)    # the bench reads data/ as the pipeline left it
    python bench/finetune_speed.py [--images 300] [--batches 6] [--rounds 4] [--finetune-from _blocks.15._expand_conv]

One model (the params' encoder unfrozen from ``--finetune-from``, the params' decoder) and the same
image-grouped batches (``batch_size / 5`` images with all their captions) for three steps:

  whole encoder       images in, every encoder layer run forward each step (how fine-tuning ran before)
  cached activations  the frozen layers' output in, only the unfrozen ones run (how `train` runs now)
  frozen encoder      features in, the decoder alone: the floor, a frozen-encoder step on these batches

Images are decoded into memory first, so image decoding, which the old path also paid, is left out
of its time. Prints ms/step of each, taken in turns (``timed_side_by_side``), the ratios, and the
one-time cost of the frozen layers per image.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import time

import keras
import numpy as np
from train_speed import timed_side_by_side

from captioner.datasets import read_captions
from captioner.features import encoders
from captioner.features.extraction import FeatureFile, load_image
from captioner.layout import Layout
from captioner.model import decoder
from captioner.stage import declared_params
from captioner.text import Vocabulary
from captioner.training import batching, finetuning
from captioner.training.config import TrainConfig
from captioner.training.trainer import Trainer


def endless(batches: batching.CaptionBatches):
    return (batch for _ in itertools.count() for batch in batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300, help="train images to draw batches from (default 300)")
    parser.add_argument("--batches", type=int, default=6, help="timed steps per method and round (default 6)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds in which the methods take turns (default 4)")
    parser.add_argument("--finetune-from", default="_blocks.15._expand_conv", help="first unfrozen layer")
    arguments = parser.parse_args()
    keras.utils.set_random_seed(0)

    params = declared_params("train")
    spec, settings, config = params["decoder"], params["train"], TrainConfig.from_params(params)
    encoder, vocab = encoders.get(params["encoder"]), Vocabulary.load(Layout().vocab)
    pooled = spec["arch"] != "attention"
    with FeatureFile(Layout().features_file(encoder.name), encoder.name) as store:
        captions = read_captions(Layout().split_captions("train"))
        rows, sequences, _ = batching.encode_captions(captions, store.row_of, vocab)
        image_rows, groups = batching.captions_by_image(rows, sequences)
        train_images = len(image_rows)
        image_rows, groups = image_rows[: arguments.images], groups[: arguments.images]
        names, size, weights = store.names, int(store.attrs["input_size"]), str(store.attrs["weights_param"])
        feature_shape = store.shape(pooled)
    images = np.stack([load_image(str(Layout().images / names[row]), size, encoder.preprocess) for row in image_rows])

    split = finetuning.finetunable_encoder(encoder, weights, size, "avg" if pooled else "grid", arguments.finetune_from)
    split.frozen.predict_on_batch(images[:32])  # warm-up: trace the forward pass
    started = time.perf_counter()
    activations = np.concatenate([split.frozen.predict_on_batch(images[i : i + 32]) for i in range(0, len(images), 32)])
    frozen_seconds = (time.perf_counter() - started) / len(images)
    features = np.concatenate([split.full.predict_on_batch(images[i : i + 32]) for i in range(0, len(images), 32)])
    features = features.reshape(len(images), *feature_shape)

    architecture = decoder.architecture(config.decoder, len(vocab))
    decoder_model = architecture.build(feature_shape)
    per_image = max(map(len, groups))
    images_per_step = max(1, settings["batch_size"] // per_image)
    inputs = {"whole encoder": images, "cached activations": activations, "frozen encoder": features}
    models = {
        "whole encoder": finetuning.joint_model(split.full, decoder_model, per_image),
        "cached activations": finetuning.joint_model(split.trainable, decoder_model, per_image),
    }
    methods = {}
    for name, table in inputs.items():
        read = table.__getitem__
        if name == "frozen encoder":  # the decoder alone reads each image's features once per caption
            read = functools.partial(lambda picked, table: np.repeat(table[picked], per_image, axis=0), table=table)
        batches = batching.ImageCaptionBatches(
            read, table.shape[1:], np.arange(len(table)), groups, per_image, images_per_step, seed=0
        )
        model = models.get(name, decoder_model)
        trainer = Trainer(model, architecture.head, dataclasses.replace(config, learning_rate=1e-3, clipnorm=5.0))
        step = trainer.train_step(batches.element_spec)
        methods[name] = (step, endless(batches), arguments.batches)

    print(
        f"{encoder.name} unfrozen from {arguments.finetune_from}, {spec['rnn']} {spec['arch']} decoder "
        f"({spec['units']} units), {images_per_step} images × {per_image} captions a step, {len(images)} images"
    )
    seconds = timed_side_by_side(methods, arguments.rounds)
    for name, value in seconds.items():
        print(f"  {name:<19} {value * 1e3:7.1f} ms/step")
    whole, cached, frozen = seconds["whole encoder"], seconds["cached activations"], seconds["frozen encoder"]
    print(f"whole encoder ÷ cached activations = {whole / cached:.2f}x per step")
    print(f"cached activations ÷ frozen encoder = {cached / frozen:.2f}x per step")
    once = frozen_seconds * train_images  # the frozen layers over every train image, before the first epoch
    steps = -(-train_images // images_per_step)
    print(
        f"frozen layers, once before training: {frozen_seconds * 1e3:.1f} ms/image, {once:.0f} s for the "
        f"{train_images} train images; repaid after {once / ((whole - cached) * steps):.2f} epochs "
        f"(an epoch: {steps} steps, ≈ {whole * steps:.0f} s whole encoder, {cached * steps:.0f} s cached)"
    )


if __name__ == "__main__":
    main()
