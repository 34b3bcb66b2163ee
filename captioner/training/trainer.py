"""What a captioner trains on (``TrainingRun``), and the optimizers and compiled steps that train it under a
tf.distribute strategy: the teacher-forced train step, the dev step, and self-critical training's policy step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from captioner.features.extraction import FeatureFile
from captioner.model.decoder import Architecture, parts
from captioner.training.batching import CaptionBatches, batches_by_image
from captioner.training.config import TrainConfig
from captioner.training.loss import EpochStats, accumulate, attention_penalty, forced_outputs, forced_sums


@dataclass
class TrainingRun:
    """What a run trains and on what: frozen cached features (``frozen_run``) or a fine-tuned encoder
    (``captioner.training.finetuning.finetuned_run``)."""

    trained: object  # the model the optimizer steps: the decoder, or the unfrozen encoder layers joined to it
    saved: object  # what models/ holds: the decoder, or the whole encoder joined to it
    batches: dict[str, CaptionBatches]  # "train" and "dev"
    dev_features: FeatureFile  # the file whose rows ``read`` takes
    read: Callable[[np.ndarray], np.ndarray]  # rows → features as the decoder reads them now


def frozen_run(
    architecture: Architecture,
    config: TrainConfig,
    cached: FeatureFile,
    encoded: dict[str, tuple[np.ndarray, list[list[int]]]],
    grouped: bool = False,
) -> TrainingRun:
    """The decoder ``architecture.model`` trained on the ``cached`` features of each split's encoded captions, about
    ``batch_size`` captions a step; the train batches remixed every epoch from the seed, the dev batches in one fixed
    order. ``grouped``: each image's captions in one batch, the image read once (``Architecture.build_grouped``),
    for decoders whose work on an image alone is worth sharing."""
    pooled, model = not config.decoder.reads_grid(cached.pooling), architecture.model
    read, shape = cached.reader(pooled), cached.shape(pooled)
    seeds = {split: config.seed if split == "train" else None for split in encoded}
    if not grouped:
        batches = {
            split: CaptionBatches(read, shape, rows, sequences, config.batch_size, seeds[split])
            for split, (rows, sequences) in encoded.items()
        }
        return TrainingRun(model, model, batches, cached, read)
    batches, per_image = batches_by_image(encoded, read, shape, config.batch_size, seeds)
    return TrainingRun(architecture.build_grouped(shape, per_image), model, batches, cached, read)


class Trainer:
    """Compiled train, dev and policy steps for a model from ``captioner.model.decoder.Architecture.build`` (or one
    joined to a fine-tuned encoder), whose vocabulary projection is ``head``, under a tf.distribute strategy.

    Build the model inside ``strategy.scope()``. Each global batch is split across the replicas;
    every replica normalises its summed loss by the real tokens of the *whole* batch, so the
    gradients the optimizer all-reduces (sums) equal those of one device on the same batch.
    ``config.clipnorm`` clips each replica's share before that sum. A fine-tuned encoder gets its own, smaller
    learning rate ``config.encoder_lr``: one Adam per group of variables. The policy step trains ``policy_model``
    (by default ``model``): the decoder itself, with ``model`` its image-grouped form (the same variables).
    """

    def __init__(
        self, model, head, config: TrainConfig, strategy: tf.distribute.Strategy | None = None, policy_model=None
    ):
        import keras

        self.model, self.head, self.attention_reg = model, head, config.attention_reg
        self.policy_model = model if policy_model is None else policy_model
        self.strategy = strategy or tf.distribute.get_strategy()
        self.groups, rates = self._variable_groups(config.learning_rate, config.encoder_lr)
        # float16 gradients underflow: its losses are scaled up (dynamically) before the backward pass.
        self.scaled = keras.mixed_precision.global_policy().compute_dtype == "float16"
        with self.strategy.scope():
            self.optimizers = [keras.optimizers.Adam(learning_rate=rate, clipnorm=config.clipnorm) for rate in rates]
            if self.scaled:
                self.optimizers = [keras.optimizers.LossScaleOptimizer(optimizer) for optimizer in self.optimizers]
            for optimizer, variables in zip(self.optimizers, self.groups, strict=True):
                optimizer.build(variables)
        self._compiled: dict[str, tf.types.experimental.PolymorphicFunction] = {}

    def _variable_groups(self, learning_rate: float, encoder_lr: float) -> tuple[list[list], list[float]]:
        encoder, _ = parts(self.model)
        encoder_ids = {id(v) for v in encoder.trainable_variables} if encoder is not None else set()
        groups = [[v for v in self.model.trainable_variables if id(v) not in encoder_ids]]
        if not encoder_ids:
            return groups, [learning_rate]
        groups.append([v for v in self.model.trainable_variables if id(v) in encoder_ids])
        return groups, [learning_rate, encoder_lr]

    @property
    def learning_rates(self) -> list[float]:
        """The decoder's learning rate, then the fine-tuned encoder's (when there is one)."""
        return [float(optimizer.learning_rate.numpy()) for optimizer in self.optimizers]

    def scale_learning_rates(self, factor: float) -> None:
        for optimizer, rate in zip(self.optimizers, self.learning_rates, strict=True):
            optimizer.learning_rate.assign(rate * factor)

    def restart(self, learning_rate: float) -> None:
        """Every optimizer afresh (no step count, zero moments) at ``learning_rate``: for a new loss whose
        gradients the old moments do not describe."""
        for optimizer in self.optimizers:
            for variable in optimizer.variables:
                variable.assign(tf.zeros_like(variable))
            optimizer.learning_rate.assign(learning_rate)

    # The steps each replica runs: summed (loss, correct tokens, real tokens) of its share of the batch.

    def _train_replica(self, features, tokens):
        with self._tape() as tape:
            outputs, (loss_sum, correct, count) = forced_outputs(self.model, self.head, features, tokens, training=True)
            loss = loss_sum / self._whole_batch(count)
            if self.attention_reg and "attention" in outputs:
                penalty = attention_penalty(tokens[:, 1:], outputs["attention"])
                loss += self.attention_reg * penalty / self.strategy.num_replicas_in_sync
            loss = self._scale(loss)
        self._descend(tape, loss)
        return loss_sum, correct, count

    def _dev_replica(self, features, tokens):
        return forced_sums(self.model, self.head, features, tokens)

    def _policy_replica(self, features, tokens, advantages):
        # No dropout: the gradient must be that of the policy the captions were sampled from.
        with self._tape() as tape:
            model, head = self.policy_model, self.head
            _, (loss_sum, correct, count) = forced_outputs(model, head, features, tokens, weights=advantages)
            loss = self._scale(loss_sum / self._whole_batch(count))
        self._descend(tape, loss)
        return loss_sum, correct, count

    def _tape(self) -> tf.GradientTape:
        # Each optimizer scales the loss its own way: one backward pass per group then.
        return tf.GradientTape(persistent=self.scaled and len(self.groups) > 1)

    def _scale(self, loss):
        return [optimizer.scale_loss(loss) for optimizer in self.optimizers] if self.scaled else loss

    def _descend(self, tape: tf.GradientTape, loss) -> None:
        if self.scaled:
            gradients = [tape.gradient(loss[i], group) for i, group in enumerate(self.groups)]
        else:
            gradients = tape.gradient(loss, self.groups)
        for optimizer, variables, group_gradients in zip(self.optimizers, self.groups, gradients, strict=True):
            optimizer.apply_gradients(zip(group_gradients, variables, strict=True))

    @staticmethod
    def _whole_batch(count):
        return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, count)

    # The compiled steps, each traced once for batches of its ``element_spec`` (None dimensions: any size).

    def train_step(self, element_spec):
        """(features, tokens) → summed (loss, correct, real tokens), descending the teacher-forced loss."""
        return self._compile(self._train_replica, element_spec)

    def dev_step(self, element_spec):
        """(features, tokens) → summed (loss, correct, real tokens), without dropout or descent."""
        return self._compile(self._dev_replica, element_spec)

    def policy_step(self, element_spec):
        """(features, tokens, advantages) → summed (loss, correct, real tokens), descending the advantage-weighted
        cross-entropy of sampled captions without dropout: self-critical training's step."""
        return self._compile(self._policy_replica, element_spec)

    def _compile(self, replica_step, element_spec):
        name = replica_step.__name__
        if name not in self._compiled:

            @tf.function(input_signature=element_spec)
            def step(*batch):
                sums = self.strategy.run(replica_step, args=batch)
                return [self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None) for value in sums]

            self._compiled[name] = step
        return self._compiled[name]

    def train_epoch(self, batches: CaptionBatches, description: str = "train") -> EpochStats:
        """One pass of the train step over ``batches``: the weights descend the teacher-forced loss."""
        return self._pass(self.train_step, batches, description)

    def dev_loss(self, batches: CaptionBatches, description: str = "dev loss") -> EpochStats:
        """The teacher-forced loss and token accuracy over ``batches``, without dropout or descent."""
        return self._pass(self.dev_step, batches, description)

    def _pass(self, step: Callable, batches: CaptionBatches, description: str) -> EpochStats:
        if self.strategy.num_replicas_in_sync == 1:
            return accumulate(step(batches.element_spec), batches, description)
        distributed = self.strategy.distribute_datasets_from_function(batches.replica_dataset)
        return accumulate(step(distributed.element_spec), distributed, description)
