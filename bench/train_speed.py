"""Training speed: our teacher-forced whole-caption training vs prefix expansion, side by side.

    dvc repro            # or dvc exp run -S dataset=flickr8k …: the bench reads data/ as the pipeline left it
    python bench/train_speed.py [--batches 20] [--rounds 8] [--budget 90]

Same train captions, vocabulary and pooled image vectors for both. Prefix expansion trains the tutorial
merge model (image Dense 256 + LSTM 256 over padded prefixes, added, Dense 256, softmax) fed one
(prefix → next word) sample at a time with one-hot targets, batch 64; ours is the merge decoder of
the same size (LSTM 256, embedding 256) on whole captions in length-bucketed batches, at batch 64
and at 128. Prints the epoch-time ratios (timed batches of each, the methods taking turns, extrapolated),
samples/s, and each method's dev loss per token after the same wall-clock budget (ours at batch 64).
"""

from __future__ import annotations

import argparse
import itertools
import time

import keras
import numpy as np
from keras import layers

from captioner import batching, decoder, training
from captioner.datasets import read_captions
from captioner.features import FeatureFile
from captioner.stage import Layout, declared_params
from captioner.text import Vocabulary

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=20, help="timed batches of batch 64 per method and round")
    parser.add_argument("--rounds", type=int, default=8, help="rounds in which the methods take turns (default 8)")
    parser.add_argument("--budget", type=float, default=90.0, help="training seconds per method for the dev loss")
    arguments = parser.parse_args()
    keras.utils.set_random_seed(0)

    encoder = declared_params("train")["encoder"]
    vocab = Vocabulary.load(Layout.vocab)
    with FeatureFile(Layout.features_file(encoder), encoder) as store:
        table = store.reader(pooled=True)(np.arange(len(store.row_of)))
        splits = {
            split: batching.encode_captions(read_captions(Layout.split_captions(split)), store.row_of, vocab)[:2]
            for split in ("train", "dev")
        }
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

    ours = decoder.build(len(vocab), table.shape[1:], decoder.DecoderSpec("lstm", "merge", SIZE, SIZE, dropout=0.5))
    trainer = training.Trainer(ours, learning_rate=1e-3, clipnorm=5.0)

    def our_batches(batch_size: int):
        data = batching.CaptionBatches(table.__getitem__, table.shape[1:], rows, sequences, batch_size, seed=0)
        return trainer.step_for("train", data.element_spec), (batch for _ in itertools.count() for batch in data)

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
    print(f"  ours:  {our_done} batches, dev loss {trainer.run_epoch(dev, 'dev', 'dev').loss:.3f}")


if __name__ == "__main__":
    main()
