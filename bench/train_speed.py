"""Training speed: our teacher-forced whole-caption training vs prefix expansion, side by side.

    dvc repro            # or dvc exp run -S dataset=flickr8k …: the bench reads data/ as the pipeline left it
    python bench/train_speed.py [--batches 20] [--rounds 8] [--budget 90]

Same train captions, vocabulary and pooled image vectors for both. Prefix expansion trains the tutorial
merge model (image Dense 256 + LSTM 256 over padded prefixes, added, Dense 256, softmax) fed one
(prefix → next word) sample at a time with one-hot targets, batch 64; ours is the merge decoder of
the same size (LSTM 256, embedding 256) on whole captions in length-bucketed batches, at batch 64
and at 128. Prints the epoch-time ratios (timed batches of each, the methods taking turns, extrapolated),
samples/s, and each method's dev loss per token after the same wall-clock budget (ours at batch 64).

Then, how close the train step runs to the machine's limit: the params' decoder trained in float32 and
in a mixed precision policy (``--mixed``, mixed_bfloat16 by default), steps taking turns. Its achieved
FLOP/s counts the decoder's matmul FLOPs per real token (and per caption), forward and backward
(3× forward); beside it, in the same run, the FLOP/s of a plain dense matmul of the step's largest
shape in the same dtype. ``--only flops`` runs just this part, ``--only prefix`` just the first;
``--archs inject,transformer`` measures each of those decoders (the params' settings otherwise), all taking turns.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from collections.abc import Callable
from functools import partial

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from captioner.datasets import read_captions
from captioner.features.extraction import FeatureFile
from captioner.layout import Layout
from captioner.model import decoder
from captioner.model.spec import DecoderSpec
from captioner.stage import declared_params
from captioner.text import Vocabulary
from captioner.training import batching
from captioner.training import train as training
from captioner.training.config import PRECISIONS, TrainConfig
from captioner.training.trainer import Trainer

BATCH = 64
SIZE = 256


def seed_merge_model(vocab_size: int, feature_dim: int, max_len: int) -> keras.Model:
    """The tutorial merge captioner trained by prefix expansion, as it is usually written."""
    image = keras.Input((feature_dim,))
    projected = layers.Dense(SIZE, activation="relu")(layers.Dropout(0.5)(image))
    prefix = keras.Input((max_len,))
    words = layers.Dropout(0.5)(layers.Embedding(vocab_size, SIZE, mask_zero=True)(prefix))
    sequence = layers.LSTM(SIZE)(words)
    hidden = layers.Dense(SIZE, activation="relu")(layers.add([projected, sequence]))
    model = keras.Model([image, prefix], layers.Dense(vocab_size, activation="softmax")(hidden))
    model.compile(loss="categorical_crossentropy", optimizer="adam")
    return model


def prefix_batches(table, rows, sequences, vocab_size, max_len, rng):
    """Prefix expansion: every (prefix → next word) pair, prefixes padded to max_len, one-hot targets."""
    images, prefixes, targets = [], [], []
    while True:
        for index in rng.permutation(len(rows)):
            sequence = sequences[index]
            for cut in range(1, len(sequence)):
                images.append(table[rows[index]])
                prefixes.append(np.pad(sequence[:cut], (max_len - cut, 0)))  # the seeds pad on the left
                targets.append(keras.utils.to_categorical(sequence[cut], vocab_size))
                if len(images) == BATCH:
                    yield [np.array(images), np.array(prefixes)], np.array(targets)
                    images, prefixes, targets = [], [], []


def seed_dev_loss(model, table, rows, sequences, max_len) -> float:
    """Mean cross-entropy per predicted token over the dev captions' prefixes."""
    images, prefixes, targets = [], [], []
    for row, sequence in zip(rows, sequences, strict=True):
        for cut in range(1, len(sequence)):
            images.append(table[row])
            prefixes.append(np.pad(sequence[:cut], (max_len - cut, 0)))
            targets.append(sequence[cut])
    probabilities = model.predict([np.array(images), np.array(prefixes)], batch_size=512, verbose=0)
    return float(-np.mean(np.log(probabilities[np.arange(len(targets)), targets] + 1e-12)))


def timed_side_by_side(methods: dict[str, tuple], rounds: int) -> dict[str, float]:
    """Seconds per batch of each method: ``methods`` maps a name to (step, batches, batches per round).

    The methods take turns, round after round, so a change in the (shared, noisy) machine's load
    hits all of them alike; two untimed warm-up batches each come first.
    """
    for step, batches, _ in methods.values():
        for _ in range(2):
            step(*next(batches))
    spent = dict.fromkeys(methods, 0.0)
    for _ in range(rounds):
        for name, (step, batches, count) in methods.items():
            started = time.perf_counter()
            for _ in range(count):
                step(*next(batches))
            spent[name] += time.perf_counter() - started
    return {name: spent[name] / (rounds * methods[name][2]) for name in methods}


def train_for(step, batches, seconds: float) -> int:
    done, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        step(*next(batches))
        done += 1
    return done


def dense_matmul(rows: int, inner: int, columns: int, dtype: str) -> tuple[Callable[[], object], int]:
    """A plain (rows × inner) · (inner × columns) matmul in ``dtype``, compiled and warmed up, and its FLOPs."""
    a = tf.cast(tf.random.normal((rows, inner), dtype=tf.float32), dtype)
    b = tf.cast(tf.random.normal((inner, columns), dtype=tf.float32), dtype)
    product = tf.function(lambda: tf.reduce_sum(tf.cast(tf.matmul(a, b), tf.float32)))
    product()
    return lambda: product().numpy(), 2 * rows * inner * columns


def machine_limit(table, rows, sequences, vocab, mixed: str, rounds: int, archs: list[str]) -> None:
    """The params' decoder's train step, once per architecture in ``archs`` (the same params but ``decoder.arch``),
    in float32 and in ``mixed``; beside each, a same-dtype dense matmul of the step's real tokens by its largest
    kernel. All take turns in rounds, so each step's achieved FLOP/s is a fraction of a matmul timed alike."""
    config = TrainConfig.from_params(declared_params("train"))
    feature_shape = table.shape[1:]
    data = batching.CaptionBatches(table.__getitem__, feature_shape, rows, sequences, config.batch_size, seed=0)
    batches = [batch for batch, _ in zip(itertools.cycle(data), range(50), strict=False)]
    tokens_per_step = int(np.mean([(tokens[:, 1:] != 0).sum() for _, tokens in batches]))
    specs = {arch: dataclasses.replace(config.decoder, arch=arch) for arch in archs}
    if any(spec.arch == "attention" for spec in specs.values()):
        raise SystemExit("the FLOP/s part reads pooled features: leave attention out")
    runs = {}  # (arch, policy) → (one step over the batches, its FLOPs, the dense matmul, its FLOPs)
    for arch, spec in specs.items():
        for policy in ("float32", mixed):
            training.use_precision(policy)
            architecture = decoder.architecture(spec, len(vocab))
            trainer = Trainer(
                architecture.build(feature_shape), architecture.head, dataclasses.replace(config, decoder=spec)
            )
            step = trainer.train_step(data.element_spec)
            for features, tokens in batches[:3]:  # compile and warm up
                step(features, tokens)
            per_token, per_caption = architecture.matmul_flops(feature_shape)
            flops = sum(3 * (per_token * int((t[:, 1:] != 0).sum()) + per_caption * len(t)) for _, t in batches)
            dense = dense_matmul(tokens_per_step, *largest_kernel(spec), policy.removeprefix("mixed_"))
            runs[arch, policy] = (partial(train_over, step, batches), flops, *dense)
        print(
            f"{arch} ({describe(spec)}), batch {config.batch_size}: {per_token / 1e6:.2f} MFLOP per real token "
            f"forward (+{per_caption / 1e6:.2f} per caption), ×3 with the backward pass"
        )
    training.use_precision("float32")
    spent = {key: [0.0, 0.0] for key in runs}
    for _ in range(rounds):
        for key, (train, _, matmul, _) in runs.items():
            spent[key][0] += timed(train)
            spent[key][1] += timed(lambda matmul=matmul: [matmul() for _ in batches])
    print(f"{rounds} rounds of {len(batches)} steps and {len(batches)} dense matmuls each, all taking turns")
    for (arch, policy), (step_seconds, dense_seconds) in spent.items():
        _, flops, _, dense_flops = runs[arch, policy]
        achieved, dense = flops * rounds / step_seconds, dense_flops * len(batches) * rounds / dense_seconds
        inner, columns = largest_kernel(specs[arch])
        print(
            f"  {arch:>11} {policy:>14}: {step_seconds * 1e3 / (rounds * len(batches)):.1f} ms/step, "
            f"{achieved / 1e9:.1f} GFLOP/s; dense ({tokens_per_step}×{inner})·({inner}×{columns}): "
            f"{dense / 1e9:.1f} GFLOP/s → fraction {achieved / dense:.2f}"
        )


def train_over(step, batches) -> None:
    for features, tokens in batches:
        step(features, tokens)[0].numpy()


def timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def describe(spec) -> str:
    if spec.arch == "transformer":
        return f"{spec.layers} blocks, width {spec.units}, {spec.heads} heads, feed-forward {spec.ff_units}"
    return f"{spec.rnn.upper()}-{spec.units}"


def largest_kernel(spec) -> tuple[int, int]:
    """(inner, columns) of the decoder's widest per-token matmul: the recurrent cell's gates, the feed-forward net."""
    if spec.arch == "transformer":
        return spec.units, spec.ff_units
    return spec.units, (3 if spec.rnn == "gru" else 4) * spec.units


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=20, help="timed batches of batch 64 per method and round")
    parser.add_argument("--rounds", type=int, default=8, help="rounds in which the methods take turns (default 8)")
    parser.add_argument("--budget", type=float, default=90.0, help="training seconds per method for the dev loss")
    parser.add_argument("--mixed", default="mixed_bfloat16", choices=PRECISIONS[1:])
    parser.add_argument("--only", choices=("prefix", "flops"), help="run one part (default: both)")
    parser.add_argument(
        "--archs", default="", help="the FLOP/s part: comma-separated decoder.arch values (default: the params')"
    )
    arguments = parser.parse_args()
    keras.utils.set_random_seed(0)

    encoder = declared_params("train")["encoder"]
    vocab = Vocabulary.load(Layout().vocab)
    with FeatureFile(Layout().features_file(encoder), encoder) as store:
        table = store.read(np.arange(len(store.row_of)), pooled=True)
        splits = {
            split: batching.encode_captions(read_captions(Layout().split_captions(split)), store.row_of, vocab)[:2]
            for split in ("train", "dev")
        }
    rows, sequences = splits["train"]
    if arguments.only != "prefix":
        archs = arguments.archs.split(",") if arguments.archs else [declared_params("train")["decoder"]["arch"]]
        machine_limit(table, rows, sequences, vocab, arguments.mixed, max(arguments.rounds // 2, 1), archs)
    if arguments.only != "flops":
        prefix_expansion_vs_ours(arguments, table, splits, vocab)


def prefix_expansion_vs_ours(arguments, table: np.ndarray, splits: dict, vocab: Vocabulary) -> None:
    """The first part: epoch times side by side, then the dev loss after the same training time."""
    rows, sequences = splits["train"]
    dev_rows, dev_sequences = (part[:500] for part in splits["dev"])
    max_len = vocab.max_length
    prefixes_per_epoch = sum(len(s) - 1 for s in sequences)
    print(
        f"{len(rows)} train captions, {prefixes_per_epoch} prefixes, vocabulary {len(vocab)}, features {table.shape[1]}"
    )

    seeds = seed_merge_model(len(vocab), table.shape[1], max_len)
    seed_batches = prefix_batches(table, rows, sequences, len(vocab), max_len, np.random.default_rng(0))
    seed_step = seeds.train_on_batch

    ours = decoder.architecture(DecoderSpec("lstm", "merge", SIZE, SIZE, dropout=0.5), len(vocab))
    config = dataclasses.replace(TrainConfig.from_params(declared_params("train")), learning_rate=1e-3, clipnorm=5.0)
    trainer = Trainer(ours.build(table.shape[1:]), ours.head, config)

    def our_batches(batch_size: int):
        data = batching.CaptionBatches(table.__getitem__, table.shape[1:], rows, sequences, batch_size, seed=0)
        return trainer.train_step(data.element_spec), (batch for _ in itertools.count() for batch in data)

    # Ours at prefix expansion's batch size (the like-for-like figure) and at the Flickr8k preset's 128.
    ours_at = {size: our_batches(size) for size in (BATCH, 2 * BATCH)}
    methods = {"seeds": (seed_step, seed_batches, arguments.batches)}
    methods |= {size: (*ours_at[size], max(arguments.batches * BATCH // size, 1)) for size in ours_at}
    seconds = timed_side_by_side(methods, arguments.rounds)
    seed_epoch = seconds["seeds"] * prefixes_per_epoch / BATCH
    print(
        f"prefix expansion, batch {BATCH}: {seconds['seeds'] * 1e3:.1f} ms/batch, "
        f"{BATCH / seconds['seeds']:.0f} prefix samples/s, epoch ≈ {seed_epoch:.0f} s"
    )
    for size in ours_at:
        our_epoch = seconds[size] * len(rows) / size
        print(
            f"ours (whole captions), batch {size}: {seconds[size] * 1e3:.1f} ms/batch, "
            f"{size / seconds[size]:.0f} captions/s, epoch ≈ {our_epoch:.1f} s  "
            f"→ epoch time, prefix expansion ÷ ours = {seed_epoch / our_epoch:.1f}x  (goal >= 15x)"
        )

    our_step, batches = ours_at[BATCH]
    seed_done = train_for(seed_step, seed_batches, arguments.budget)
    our_done = train_for(our_step, batches, arguments.budget)
    dev = batching.CaptionBatches(table.__getitem__, table.shape[1:], dev_rows, dev_sequences, 256)
    print(f"after {arguments.budget:.0f} s of training each (+ the timed batches):")
    prefix_dev_loss = seed_dev_loss(seeds, table, dev_rows, dev_sequences, max_len)
    print(f"  prefix expansion: {seed_done} batches, dev loss {prefix_dev_loss:.3f}")
    print(f"  ours:  {our_done} batches, dev loss {trainer.dev_loss(dev, 'dev').loss:.3f}")


if __name__ == "__main__":
    main()
