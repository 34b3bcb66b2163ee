"""Teacher-forced training on whole captions with a masked loss, early stopping on the dev split."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from captioner.decoder import parts
from captioner.stage import StageError, progress
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
    return np.array(rows, dtype=np.int64), sequences, len(captions) - len(rows)


def pad(sequences: list[list[int]]) -> np.ndarray:
    """Right-pad with the pad id to the longest sequence given (per batch, not the global maximum)."""
    padded = np.full((len(sequences), max(map(len, sequences))), Vocabulary.pad_id, dtype=np.int32)
    for row, sequence in enumerate(sequences):
        padded[row, : len(sequence)] = sequence
    return padded


BUCKET_WINDOW = 50  # batches whose captions are sorted by length together: little padding, still well mixed


def length_buckets(lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """Caption indices grouped into batches of similar length, so few RNN steps and logits are padding.

    Without ``rng`` (dev, test) every caption is sorted by length. With it the captions are shuffled,
    sorted by length within windows of ``BUCKET_WINDOW`` batches, and the batches shuffled, so each
    call gives a new mix.
    """

    def sorted_batches(indices: np.ndarray) -> list[np.ndarray]:
        ordered = indices[np.argsort(lengths[indices], kind="stable")]
        return [ordered[begin : begin + batch_size] for begin in range(0, len(ordered), batch_size)]

    if rng is None:
        return sorted_batches(np.arange(len(lengths)))
    shuffled, window = rng.permutation(len(lengths)), batch_size * BUCKET_WINDOW
    groups = [
        batch for begin in range(0, len(shuffled), window) for batch in sorted_batches(shuffled[begin : begin + window])
    ]
    return [groups[index] for index in rng.permutation(len(groups))]


class CaptionBatches:
    """(features, tokens) NumPy batches of similar-length captions (``length_buckets``), each padded to
    its own longest caption; features come from ``read(rows)`` as each batch is made. Iterate it
    once per epoch; with ``seed`` each iteration is a new mix, repeatably.

    ``read`` may index an array in memory or stream from the HDF5 file, so the grid of a whole
    dataset never has to fit in RAM. Plain Python rather than ``tf.data.Dataset.from_generator``:
    on 2 CPU cores that wrapper cost ~5 ms per batch, ~8% of a batch-64 train step.
    """

    def __init__(
        self,
        read: Callable[[np.ndarray], np.ndarray],
        feature_shape: tuple[int, ...],
        rows: np.ndarray,
        sequences: list[list[int]],
        batch_size: int,
        seed: int | None = None,
    ):
        self.read, self.rows, self.sequences, self.batch_size = read, rows, sequences, batch_size
        self.lengths = np.array([len(sequence) for sequence in sequences])
        self.shuffler = np.random.default_rng(seed) if seed is not None else None
        self.element_spec = (
            tf.TensorSpec((None, *feature_shape), tf.float32),
            tf.TensorSpec((None, None), tf.int32),  # None: every batch has its own width
        )

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for picked in length_buckets(self.lengths, self.batch_size, self.shuffler):
            yield self.read(self.rows[picked]), self.tokens(picked)

    def tokens(self, picked: np.ndarray) -> np.ndarray:
        return pad([self.sequences[i] for i in picked])

    def __len__(self) -> int:
        return -(-len(self.sequences) // self.batch_size)

    def as_dataset(self) -> tf.data.Dataset:
        """The same batches as a ``tf.data.Dataset``, for distribution strategies that split them."""
        return tf.data.Dataset.from_generator(self.__iter__, output_signature=self.element_spec).prefetch(2)


def captions_by_image(rows: np.ndarray, sequences: list[list[int]]) -> tuple[list[int], list[list[list[int]]]]:
    """Group ``training.encode_captions`` output by image: (feature rows in first-seen order, captions of each)."""
    grouped: dict[int, list[list[int]]] = {}
    for row, sequence in zip(rows.tolist(), sequences, strict=True):
        grouped.setdefault(row, []).append(sequence)
    return list(grouped), list(grouped.values())


class ImageCaptionBatches(CaptionBatches):
    """``CaptionBatches`` by image: each batch holds ``batch_size`` images' features and *all* their captions,
    ``per_image`` token rows each (all padding where an image has fewer), so a model can run an encoder
    once per image and repeat its output per caption. Images whose longest captions are alike are
    batched together."""

    def __init__(
        self,
        read: Callable[[np.ndarray], np.ndarray],
        feature_shape: tuple[int, ...],
        rows: np.ndarray,
        captions: list[list[list[int]]],
        per_image: int,
        batch_size: int,
        seed: int | None = None,
    ):
        super().__init__(read, feature_shape, rows, captions, batch_size, seed)
        self.lengths = np.array([max(map(len, group)) for group in captions])
        self.per_image = per_image

    def tokens(self, picked: np.ndarray) -> np.ndarray:
        missing = [[]] * self.per_image  # fully masked rows where an image has fewer captions
        return pad([caption for i in picked for caption in (self.sequences[i] + missing)[: self.per_image]])


def forced_outputs(model, features, tokens, training: bool = False, weights=None) -> tuple[dict, tuple[tf.Tensor, ...]]:
    """``model`` fed the true previous words: its outputs and (summed cross-entropy, correct predictions,
    real tokens) over the next words, padding excluded. With ``weights`` (one per caption), each
    caption's cross-entropy counts that many times: self-critical training's advantages.

    The vocabulary projection, a step's largest matmul, runs only at real positions: the model's
    ``hidden`` output is gathered there and projected by its ``logits`` layer. The full-width
    ``logits`` output goes unused, and tf.function prunes it.
    """
    outputs = model([features, tokens[:, :-1]], training=training)
    targets = tokens[:, 1:]
    real = targets != Vocabulary.pad_id
    targets = tf.boolean_mask(targets, real)
    logits = parts(model)[1].get_layer("logits")(tf.boolean_mask(outputs["hidden"], real))
    cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
    if weights is not None:
        cross_entropy *= tf.boolean_mask(tf.broadcast_to(weights[:, None], tf.shape(real)), real)
    correct = tf.cast(tf.argmax(logits, axis=-1, output_type=tf.int32) == targets, tf.float32)
    count = tf.cast(tf.size(targets), tf.float32)
    return outputs, (tf.reduce_sum(cross_entropy), tf.reduce_sum(correct), count)


def attention_penalty(targets: tf.Tensor, attention: tf.Tensor) -> tf.Tensor:
    """Show-Attend-Tell's doubly stochastic term: every grid cell should get about one unit of attention."""
    mask = tf.cast(targets != Vocabulary.pad_id, tf.float32)[..., None]
    coverage = tf.reduce_sum(attention * mask, axis=1)
    return tf.reduce_mean(tf.square(1.0 - coverage))


@dataclass
class EpochStats:
    loss: float  # mean cross-entropy per real token
    accuracy: float

    @property
    def perplexity(self) -> float:
        return float(np.exp(self.loss))


def forced_sums(model, features, tokens) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The sums of ``forced_outputs`` without dropout."""
    return forced_outputs(model, features, tokens)[1]


def _accumulate(step, batches: Iterable, description: str) -> EpochStats:
    totals = np.zeros(3)
    for features, tokens in progress(batches, desc=description, unit="batch", leave=False):
        totals += [float(value) for value in step(features, tokens)]
    if not totals[2]:  # no batch: no loss, rather than a division warning
        return EpochStats(loss=float("nan"), accuracy=float("nan"))
    return EpochStats(loss=totals[0] / totals[2], accuracy=totals[1] / totals[2])


def teacher_forced(model, batches: CaptionBatches) -> EpochStats:
    """Loss, token accuracy and perplexity of ``model`` fed the true previous words (no dropout)."""
    step = tf.function(functools.partial(forced_sums, model), input_signature=batches.element_spec)
    return _accumulate(step, batches, "teacher-forced loss")


STRATEGIES = ("auto", "mirrored", "default")
LOSS_MARGIN = 1e-4  # a dev loss lower by less than this is no improvement (for the kept weights and the pacing)
SELECT_BY = ("dev_loss", "dev_bleu4")  # which epoch's weights are kept (the dev loss paces training either way)


def strategy_named(name: str) -> tf.distribute.Strategy:
    """``auto``: mirrored over all local GPUs when there are two or more, else the default (one device).

    ``mirrored`` always mirrors (over every GPU, or the CPU when there is none); ``default`` never does.
    """
    if name == "auto":
        name = "mirrored" if len(tf.config.list_logical_devices("GPU")) > 1 else "default"
    return tf.distribute.MirroredStrategy() if name == "mirrored" else tf.distribute.get_strategy()


class Trainer:
    """Compiled train and dev steps for a model from ``captioner.decoder.build``, under a tf.distribute strategy.

    Build the model inside ``strategy.scope()``. Each global batch is split across the replicas;
    every replica normalises its summed loss by the real tokens of the *whole* batch, so the
    gradients the optimizer all-reduces (sums) equal those of one device on the same batch.
    ``clipnorm`` clips each replica's share before that sum.
    """

    def __init__(
        self,
        model,
        learning_rate: float,
        clipnorm: float,
        attention_reg: float = 0.0,
        strategy: tf.distribute.Strategy | None = None,
        encoder_lr: float | None = None,
    ):
        import keras

        self.model = model
        self.strategy = strategy or tf.distribute.get_strategy()
        encoder, _ = parts(model)
        # A fine-tuned encoder gets its own, smaller learning rate: one Adam per group of variables.
        encoder_ids = {id(v) for v in encoder.trainable_variables} if encoder is not None else set()
        groups = [[v for v in model.trainable_variables if id(v) not in encoder_ids]]
        rates = [learning_rate]
        if encoder_ids:
            groups.append([v for v in model.trainable_variables if id(v) in encoder_ids])
            rates.append(encoder_lr if encoder_lr is not None else learning_rate)
        with self.strategy.scope():
            self.optimizers = [keras.optimizers.Adam(learning_rate=rate, clipnorm=clipnorm) for rate in rates]
            for optimizer, variables in zip(self.optimizers, groups, strict=True):
                optimizer.build(variables)
        replicas = self.strategy.num_replicas_in_sync

        def descend(tape, loss):
            for optimizer, variables, gradients in zip(
                self.optimizers, groups, tape.gradient(loss, groups), strict=True
            ):
                optimizer.apply_gradients(zip(gradients, variables, strict=True))

        def whole_batch(count):
            return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, count)

        def train_replica(features, tokens):
            with tf.GradientTape() as tape:
                outputs, (loss_sum, correct, count) = forced_outputs(model, features, tokens, training=True)
                loss = loss_sum / whole_batch(count)
                if attention_reg and "attention" in outputs:
                    loss += attention_reg * attention_penalty(tokens[:, 1:], outputs["attention"]) / replicas
            descend(tape, loss)
            return loss_sum, correct, count

        def policy_replica(features, tokens, advantages):
            # No dropout: the gradient must be that of the policy the captions were sampled from.
            with tf.GradientTape() as tape:
                _, (loss_sum, correct, count) = forced_outputs(model, features, tokens, weights=advantages)
                loss = loss_sum / whole_batch(count)
            descend(tape, loss)
            return loss_sum, correct, count

        self._replica_steps = {
            True: train_replica,
            False: functools.partial(forced_sums, model),
            "policy": policy_replica,
        }
        self._compiled = {}

    def restart(self, learning_rate: float) -> None:
        """Every optimizer afresh (no step count, zero moments) at ``learning_rate``: for a new loss whose
        gradients the old moments do not describe."""
        for optimizer in self.optimizers:
            for variable in optimizer.variables:
                variable.assign(tf.zeros_like(variable))
            optimizer.learning_rate.assign(learning_rate)

    def step_for(self, training: bool | str, element_spec):
        """The compiled train (True), dev (False) or ``"policy"`` step for batches of ``element_spec``:
        (features, tokens[, advantages]) → summed (loss, correct tokens, real tokens). Compiled once per
        mode; the spec's None dimensions keep per-batch sizes from retracing.

        ``"policy"`` is self-critical training's step: it descends the advantage-weighted cross-entropy
        of sampled captions, without dropout.
        """
        if training not in self._compiled:
            replica_step = self._replica_steps[training]

            @tf.function(input_signature=element_spec)
            def step(*batch):
                sums = self.strategy.run(replica_step, args=batch)
                return [self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None) for value in sums]

            self._compiled[training] = step
        return self._compiled[training]

    def run_epoch(self, batches: CaptionBatches, training: bool, description: str) -> EpochStats:
        if self.strategy.num_replicas_in_sync == 1:
            return _accumulate(self.step_for(training, batches.element_spec), batches, description)
        distributed = self.strategy.experimental_distribute_dataset(batches.as_dataset())
        return _accumulate(self.step_for(training, distributed.element_spec), distributed, description)

    def fit(
        self,
        train: CaptionBatches,
        dev: CaptionBatches,
        epochs: int,
        patience: int,
        live,
        lr_patience: int | None = None,
        lr_factor: float = 0.5,
        dev_bleu4: Callable[[], float] | None = None,
    ) -> dict:
        """Train until ``epochs``, or ``patience`` epochs without a lower dev loss; restore the best weights.

        After ``lr_patience`` epochs without a lower dev loss the learning rate is multiplied by
        ``lr_factor``. The best weights are those of the lowest dev loss, or with ``dev_bleu4`` (a
        function scoring the model as it is now, e.g. ``decoding.greedy_bleu4``) of the best score: the
        metric users read, not its proxy. That score only picks the epoch. It jumps too much from epoch
        to epoch to pace training: on Flickr8k, LR drops and stops that followed it halved the rate
        while the loss still fell fast, and stopped training while it still did.
        """
        monitor = "dev_bleu4" if dev_bleu4 is not None else "dev_loss"
        best_score, best_epoch, best_weights = -np.inf, 0, self.model.get_weights()
        best_loss, lowest_loss, lowest_epoch, last_change = np.inf, np.inf, 0, 0
        for epoch in range(1, epochs + 1):
            started = time.perf_counter()
            train_stats = self.run_epoch(train, True, f"train: epoch {epoch}")
            dev_stats = self.run_epoch(dev, False, "train: dev loss")
            bleu4 = dev_bleu4() if dev_bleu4 is not None else None
            seconds = time.perf_counter() - started
            for split, stats in (("train", train_stats), ("dev", dev_stats)):
                if not np.isfinite(stats.loss):
                    # NaN compares false, so no epoch would beat the start: the untrained weights would be kept.
                    raise StageError(
                        f"the {split} loss is {stats.loss} at epoch {epoch}: training diverged or the {split} "
                        "batches are empty; no model saved (a lower train.learning_rate may help)"
                    )
            for split, stats in (("train", train_stats), ("dev", dev_stats)):
                live.log_metric(f"{split}/loss", round(stats.loss, 4))
                live.log_metric(f"{split}/token_accuracy", round(stats.accuracy, 4))
                live.log_metric(f"{split}/perplexity", round(stats.perplexity, 3))
            if bleu4 is not None:
                live.log_metric("dev/bleu4", round(bleu4, 4))
            rates = [float(optimizer.learning_rate.numpy()) for optimizer in self.optimizers]
            learning_rate = rates[0]
            live.log_metric("learning_rate", float(f"{learning_rate:.3g}"))
            if len(rates) > 1:
                live.log_metric("encoder_learning_rate", float(f"{rates[1]:.3g}"))
            live.log_metric("epoch_seconds", round(seconds, 1))
            live.next_step()
            shown_bleu = f", dev BLEU-4 {bleu4:.4f}" if bleu4 is not None else ""
            print(
                f"train: epoch {epoch}: loss {train_stats.loss:.3f}, dev loss {dev_stats.loss:.3f}{shown_bleu}, "
                f"dev token accuracy {dev_stats.accuracy:.3f}, lr {learning_rate:.2g} ({seconds:.1f}s)"
            )
            score, margin = (bleu4, 1e-5) if bleu4 is not None else (-dev_stats.loss, LOSS_MARGIN)
            if score > best_score + margin:
                best_score, best_epoch, best_weights = score, epoch, self.model.get_weights()
                best_loss = dev_stats.loss
            if dev_stats.loss < lowest_loss - LOSS_MARGIN:
                lowest_loss, lowest_epoch, last_change = dev_stats.loss, epoch, epoch
            elif epoch - lowest_epoch >= patience:
                print(
                    f"train: stopping early, no lower dev loss than {lowest_loss:.4f} (epoch {lowest_epoch}) "
                    f"for {patience} epochs; best {monitor} {abs(best_score):.4f} at epoch {best_epoch}"
                )
                break
            elif lr_patience and epoch - last_change >= lr_patience:
                for optimizer, rate in zip(self.optimizers, rates, strict=True):
                    optimizer.learning_rate.assign(rate * lr_factor)
                last_change = epoch
        self.model.set_weights(best_weights)
        summary = {"best_epoch": best_epoch, "best_dev_loss": float(best_loss), "epochs_run": epoch}
        return summary | ({"best_dev_bleu4": float(best_score)} if dev_bleu4 is not None else {})
