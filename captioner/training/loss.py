"""The teacher-forced loss: the model fed the true previous words, cross-entropy over the real next words."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from captioner.files import progress
from captioner.text import Vocabulary
from captioner.training.batching import CaptionBatches


def forced_outputs(
    model, head, features, tokens, training: bool = False, weights=None
) -> tuple[dict, tuple[tf.Tensor, ...]]:
    """``model`` fed the true previous words: its outputs and (summed cross-entropy, correct predictions,
    real tokens) over the next words, padding excluded. With ``weights`` (one per caption), each
    caption's cross-entropy counts that many times: self-critical training's advantages.

    The vocabulary projection ``head``, a step's largest matmul, runs only at real positions: the model's
    ``hidden`` output is gathered there and projected. The full-width ``logits`` output goes unused, and
    tf.function prunes it.
    """
    outputs = model([features, tokens[:, :-1]], training=training)
    targets = tokens[:, 1:]
    real = targets != Vocabulary.pad_id
    targets = tf.boolean_mask(targets, real)
    logits = head(tf.boolean_mask(outputs["hidden"], real))
    cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
    if weights is not None:
        cross_entropy *= tf.boolean_mask(tf.broadcast_to(weights[:, None], tf.shape(real)), real)
    correct = tf.cast(tf.argmax(logits, axis=-1, output_type=tf.int32) == targets, tf.float32)
    count = tf.cast(tf.size(targets), tf.float32)
    return outputs, (tf.reduce_sum(cross_entropy), tf.reduce_sum(correct), count)


def attention_penalty(targets: tf.Tensor, attention: tf.Tensor) -> tf.Tensor:
    """Show-Attend-Tell's doubly stochastic term: every grid cell should get about one unit of attention."""
    mask = tf.cast(targets != Vocabulary.pad_id, tf.float32)[..., None]
    coverage = tf.reduce_sum(tf.cast(attention, tf.float32) * mask, axis=1)
    return tf.reduce_mean(tf.square(1.0 - coverage))


@dataclass
class EpochStats:
    loss: float  # mean cross-entropy per real token
    accuracy: float

    @property
    def perplexity(self) -> float:
        return float(np.exp(self.loss))


def forced_sums(model, head, features, tokens) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The sums of ``forced_outputs`` without dropout."""
    return forced_outputs(model, head, features, tokens)[1]


def accumulate(step, batches: Iterable, description: str) -> EpochStats:
    totals = np.zeros(3)
    for features, tokens in progress(batches, desc=description, unit="batch", leave=False):
        totals += [float(value) for value in step(features, tokens)]
    if not totals[2]:  # no batch: no loss, rather than a division warning
        return EpochStats(loss=float("nan"), accuracy=float("nan"))
    return EpochStats(loss=totals[0] / totals[2], accuracy=totals[1] / totals[2])


def teacher_forced(model, head, batches: CaptionBatches) -> EpochStats:
    """Loss, token accuracy and perplexity of ``model`` (projected by ``head``) fed the true previous words (no
    dropout)."""
    step = tf.function(functools.partial(forced_sums, model, head), input_signature=batches.element_spec)
    return accumulate(step, batches, "teacher-forced loss")
