"""Teacher-forced training on whole captions with a masked loss, early stopping on the dev split."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from captioner.stage import progress
from captioner.text import Vocabulary


def encode_captions(
    captions: list[tuple[str, list[str]]], row_of: dict[str, int], vocab: Vocabulary
) -> tuple[np.ndarray, list[list[int]], int]:
    """Feature rows and token ids of the captions that fit; how many were dropped (too long or no features)."""
    rows, sequences = [], []
    for image, tokens in captions:
        if image in row_of and len(tokens) <= vocab.max_length:
            rows.append(row_of[image])
            sequences.append(vocab.encode(tokens))
    return np.array(rows, dtype=np.int32), sequences, len(captions) - len(rows)


def batches(
    features: np.ndarray, rows: np.ndarray, sequences: list[list[int]], batch_size: int, seed: int | None = None
) -> tf.data.Dataset:
    """(features, tokens) batches, each padded only to its own longest caption; shuffled when ``seed`` is given."""
    lengths = np.array([len(sequence) for sequence in sequences], dtype=np.int64)
    ragged = tf.RaggedTensor.from_row_lengths(np.concatenate(sequences).astype(np.int32), lengths)
    table = tf.constant(features)
    dataset = tf.data.Dataset.from_tensor_slices((rows, ragged))
    if seed is not None:
        dataset = dataset.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True)
    return (
        dataset.map(lambda row, tokens: (tf.gather(table, row), tokens), num_parallel_calls=tf.data.AUTOTUNE)
        .padded_batch(batch_size, padded_shapes=([features.shape[1]], [None]))
        .prefetch(tf.data.AUTOTUNE)
    )


def masked_sums(targets: tf.Tensor, logits: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Summed cross-entropy, correct predictions and real tokens, padding excluded."""
    mask = tf.cast(targets != Vocabulary.pad_id, tf.float32)
    cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
    correct = tf.cast(tf.argmax(logits, axis=-1, output_type=tf.int32) == targets, tf.float32)
    return tf.reduce_sum(cross_entropy * mask), tf.reduce_sum(correct * mask), tf.reduce_sum(mask)


@dataclass
class EpochStats:
    loss: float  # mean per real token
    accuracy: float

    @property
    def perplexity(self) -> float:
        return float(np.exp(self.loss))


class Trainer:
    """A compiled train step and dev step for ``model`` (inputs: features, tokens → logits)."""

    def __init__(self, model, learning_rate: float, clipnorm: float):
        import keras

        self.model = model
        self.optimizer = keras.optimizers.Adam(learning_rate=learning_rate, clipnorm=clipnorm)
        self.optimizer.build(model.trainable_variables)
        spec = (tf.TensorSpec([None, None], tf.float32), tf.TensorSpec([None, None], tf.int32))

        @tf.function(input_signature=spec)
        def train_step(features, tokens):
            inputs, targets = tokens[:, :-1], tokens[:, 1:]
            with tf.GradientTape() as tape:
                loss_sum, correct, count = masked_sums(targets, model([features, inputs], training=True))
                loss = loss_sum / count
            gradients = tape.gradient(loss, model.trainable_variables)
            self.optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
            return loss_sum, correct, count

        @tf.function(input_signature=spec)
        def dev_step(features, tokens):
            return masked_sums(tokens[:, 1:], model([features, tokens[:, :-1]], training=False))

        self.train_step, self.dev_step = train_step, dev_step

    def run_epoch(self, dataset: tf.data.Dataset, training: bool, description: str) -> EpochStats:
        step = self.train_step if training else self.dev_step
        totals = np.zeros(3)
        for features, tokens in progress(dataset, desc=description, unit="batch", leave=False):
            totals += [float(value) for value in step(features, tokens)]
        return EpochStats(loss=totals[0] / totals[2], accuracy=totals[1] / totals[2])

    def fit(self, train: tf.data.Dataset, dev: tf.data.Dataset, epochs: int, patience: int, live) -> dict:
        """Train until ``epochs`` or ``patience`` epochs without a better dev loss; restore the best weights."""
        best_loss, best_epoch, best_weights = np.inf, 0, self.model.get_weights()
        for epoch in range(1, epochs + 1):
            started = time.perf_counter()
            train_stats = self.run_epoch(train, True, f"train: epoch {epoch}")
            dev_stats = self.run_epoch(dev, False, "train: dev loss")
            seconds = time.perf_counter() - started
            for split, stats in (("train", train_stats), ("dev", dev_stats)):
                live.log_metric(f"{split}/loss", stats.loss)
                live.log_metric(f"{split}/token_accuracy", stats.accuracy)
                live.log_metric(f"{split}/perplexity", stats.perplexity)
            live.log_metric("epoch_seconds", seconds)
            live.next_step()
            print(
                f"train: epoch {epoch}: loss {train_stats.loss:.3f}, dev loss {dev_stats.loss:.3f}, "
                f"dev token accuracy {dev_stats.accuracy:.3f} ({seconds:.1f}s)"
            )
            if dev_stats.loss < best_loss - 1e-4:
                best_loss, best_epoch, best_weights = dev_stats.loss, epoch, self.model.get_weights()
            elif epoch - best_epoch >= patience:
                print(f"train: stopping early, best dev loss {best_loss:.3f} at epoch {best_epoch}")
                break
        self.model.set_weights(best_weights)
        return {"best_epoch": best_epoch, "best_dev_loss": float(best_loss), "epochs_run": epoch}
