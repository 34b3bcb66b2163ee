"""Grid decoders reading each image once: the teacher-forced epoch with every caption carrying its own copy of the
image (each caption's batch row projects the grid) vs captions grouped by image (the grid projected once per image,
repeated for its captions), and the Transformer's self-critical epoch with a decoding cache of its whole context vs
one of the positions decoded. Flickr8k's shapes on synthetic data, so it runs anywhere in minutes: a Lite0 grid
(7×7×1280), 5 captions an image of 8–16 tokens, 2,274 words, the presets' decoders (attention GRU-512; Transformer
2 blocks of width 512, 8 heads, feed-forward 2048), batch 128. The ways take turns, round after round, so a change
in the machine's load hits them alike; each prints seconds per epoch of ``--images`` images and the ratio.
``--only alternatives`` times two more ways of the Transformer's grouped teacher-forced epoch against it: the step
compiled by XLA (``jit_compile``; each new batch width is a new compilation) and ``train.precision:
mixed_bfloat16``.

    python bench/image_sharing.py [--images 200] [--rounds 3] [--only teacher|self-critical|alternatives]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from captioner import process

process.prepare()  # a quiet console: before TensorFlow starts
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from captioner.model import decoder  # noqa: E402
from captioner.model.decoder import Stepper  # noqa: E402
from captioner.model.spec import DecoderSpec  # noqa: E402
from captioner.text import Vocabulary  # noqa: E402
from captioner.training.batching import (  # noqa: E402
    CaptionBatches,
    ImageCaptionBatches,
    batches_by_image,
    captions_by_image,
)
from captioner.training.config import TrainConfig  # noqa: E402
from captioner.training.loss import accumulate  # noqa: E402
from captioner.training.self_critical import SampledImages, SelfCritical  # noqa: E402
from captioner.training.trainer import Trainer  # noqa: E402

CELLS, CHANNELS, WORDS, CAPTIONS, BATCH = 49, 1280, 2274, 5, 128
SPECS = {
    "attention": DecoderSpec("gru", "attention", units=512, embedding_dim=256, dropout=0.5),
    "transformer": DecoderSpec("gru", "transformer", units=512, embedding_dim=512, dropout=0.3),
}


def synthetic(images: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[list[int]], Vocabulary]:
    """Grid features, each caption's image row, its tokens (start … end), and the vocabulary."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(images, CELLS, CHANNELS)).astype(np.float32)
    vocab = Vocabulary([f"w{index}" for index in range(WORDS)], max_length=34)
    rows = np.repeat(np.arange(images), CAPTIONS)
    sequences = [
        [vocab.start_id, *rng.integers(4, len(vocab), size=rng.integers(6, 15)).tolist(), vocab.end_id] for _ in rows
    ]
    return features, rows, sequences, vocab


def grouped(features, rows, sequences) -> ImageCaptionBatches:
    """The train stage's batches of a grid decoder: each image's captions together, seed 0."""
    train = {"train": (rows, sequences)}
    batches, _ = batches_by_image(train, features.__getitem__, features.shape[1:], BATCH, {"train": 0})
    return batches["train"]


def teacher_forced_epochs(features, rows, sequences, vocab, rounds: int) -> None:
    """Seconds per teacher-forced epoch of each grid decoder, its captions apart vs grouped by image."""
    config = dataclasses.replace(TrainConfig(), batch_size=BATCH, seed=0)
    for name, spec in SPECS.items():
        keras.utils.set_random_seed(0)
        architecture = decoder.architecture(spec, len(vocab))
        model = architecture.build(features.shape[1:])
        ways = {
            "apart": (model, CaptionBatches(features.__getitem__, features.shape[1:], rows, sequences, BATCH, 0)),
            "grouped": (architecture.build_grouped(features.shape[1:], CAPTIONS), grouped(features, rows, sequences)),
        }
        steps = {way: Trainer(trained, architecture.head, config) for way, (trained, _) in ways.items()}
        for way, (_, batches) in ways.items():  # compile and warm up
            step = steps[way].train_step(batches.element_spec)
            step(*next(iter(batches)))
        spent = dict.fromkeys(ways, 0.0)
        for _ in range(rounds):
            for way, (_, batches) in ways.items():
                started = time.perf_counter()
                accumulate(steps[way].train_step(batches.element_spec), batches, way)
                spent[way] += time.perf_counter() - started
        apart, shared = (spent[way] / rounds for way in ways)
        print(
            f"{name} teacher-forced epoch: apart {apart:.1f} s, grouped by image {shared:.1f} s: {shared / apart:.2f}×"
        )


class WholeContext:
    """A stepper whose transformer caches every position of its context, whatever is decoded: the old cache."""

    def __init__(self, stepper: Stepper):
        self.stepper = stepper
        self.reads_grid, self.attends, self.features = stepper.reads_grid, stepper.attends, stepper.features
        self.context, self.step = stepper.context, stepper.step

    def start(self, features, length):
        return self.stepper.start(features, self.context)


def self_critical_epochs(features, rows, sequences, vocab, rounds: int) -> None:
    """Seconds per self-critical epoch of the Transformer (sampling, rewards, policy steps): a cache of its context and
    a policy step per caption (before), a cache of the positions decoded, and that with the policy step grouped by
    image (now)."""
    config = dataclasses.replace(TrainConfig(), batch_size=BATCH, seed=0, self_critical_epochs=1)
    keras.utils.set_random_seed(0)
    architecture = decoder.architecture(SPECS["transformer"], len(vocab))
    model = architecture.build(features.shape[1:])
    grouped = architecture.build_grouped(features.shape[1:], config.self_critical_samples)
    apart, together = (Trainer(model, architecture.head, config, policy_model=policy) for policy in (model, grouped))
    image_rows, groups = captions_by_image(rows, sequences)
    references = [[vocab.decode(caption) for caption in group] for group in groups]
    images = SampledImages(features.__getitem__, features.shape[1:], np.array(image_rows), references, vocab)
    stepper = Stepper(architecture)
    ways = {
        "cache of the context, policy per caption": SelfCritical(apart, WholeContext(stepper), images, config),
        "cache of the positions decoded, policy per caption": SelfCritical(apart, stepper, images, config),
        "cache of the positions decoded, policy grouped by image": SelfCritical(
            together, stepper, dataclasses.replace(images, grouped=True), config
        ),
    }
    for phase in ways.values():  # compile and warm up
        phase.rows = phase.rows[: BATCH // config.self_critical_samples]
        phase.train_epoch("warm-up")
        phase.rows = np.array(image_rows)
    spent = dict.fromkeys(ways, 0.0)
    for _ in range(rounds):
        for way, phase in ways.items():
            started = time.perf_counter()
            phase.train_epoch(way)
            spent[way] += time.perf_counter() - started
    before = spent[next(iter(ways))] / rounds
    for way in ways:
        print(
            f"transformer self-critical epoch, {way}: {spent[way] / rounds:.1f} s, {spent[way] / rounds / before:.2f}×"
        )


class XlaTrainer(Trainer):
    """A ``Trainer`` whose steps XLA compiles (``jit_compile``): one compilation per batch shape."""

    def _compile(self, replica_step, element_spec):
        name = f"xla {replica_step.__name__}"
        if name not in self._compiled:
            plain = super()._compile(replica_step, element_spec)
            self._compiled[name] = tf.function(plain.python_function, input_signature=element_spec, jit_compile=True)
        return self._compiled[name]


def alternatives(features, rows, sequences, vocab, rounds: int) -> None:
    """Seconds per grouped teacher-forced epoch of the Transformer: as trained, XLA-compiled, in mixed bfloat16."""
    config = dataclasses.replace(TrainConfig(), batch_size=BATCH, seed=0)
    batches = grouped(features, rows, sequences)
    ways = {}
    for way, policy, trainer in (
        ("float32", "float32", Trainer),
        ("float32, XLA-compiled step", "float32", XlaTrainer),
        ("mixed_bfloat16", "mixed_bfloat16", Trainer),
    ):
        keras.mixed_precision.set_global_policy(policy)
        keras.utils.set_random_seed(0)
        architecture = decoder.architecture(SPECS["transformer"], len(vocab))
        architecture.build(features.shape[1:])
        model = architecture.build_grouped(features.shape[1:], CAPTIONS)
        ways[way] = trainer(model, architecture.head, config).train_step(batches.element_spec)
        ways[way](*next(iter(batches)))  # compile and warm up
    keras.mixed_precision.set_global_policy("float32")
    spent = dict.fromkeys(ways, 0.0)
    for _ in range(rounds):
        for way, step in ways.items():
            started = time.perf_counter()
            accumulate(step, batches, way)
            spent[way] += time.perf_counter() - started
    for way, seconds in spent.items():
        ratio = seconds / spent["float32"]
        print(f"transformer teacher-forced epoch, grouped, {way}: {seconds / rounds:.1f} s, {ratio:.2f}×")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=("teacher", "self-critical", "alternatives"))
    arguments = parser.parse_args()
    data = synthetic(arguments.images)
    print(f"{arguments.images} images × {CAPTIONS} captions, batch {BATCH}, {arguments.rounds} rounds taking turns")
    if arguments.only in (None, "teacher"):
        teacher_forced_epochs(*data, arguments.rounds)
    if arguments.only in (None, "self-critical"):
        self_critical_epochs(*data, arguments.rounds)
    if arguments.only == "alternatives":
        alternatives(*data, arguments.rounds)


if __name__ == "__main__":
    main()
