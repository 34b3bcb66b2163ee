"""The teacher-forced loss (captioner.training.loss)."""

import numpy as np
import pytest
import tensorflow as tf

from captioner.model import decoder
from captioner.text import Vocabulary, wrap
from captioner.training import loss
from tests.conftest import toy_batches, toy_decoder, toy_problem


@pytest.mark.parametrize("arch", decoder.ARCHS)
def test_forced_sums_project_only_real_positions_and_equal_the_masked_full_loss(arch):
    features, captions, vocab = toy_problem()
    captions[0] = (captions[0][0], wrap(["the", "thing"]))  # a shorter caption: its batch has padding
    architecture = toy_decoder(vocab, features, arch)
    model = architecture.model
    inputs, tokens = map(tf.constant, next(iter(toy_batches(features, captions, vocab, arch, shuffle_seed=None))))
    assert (tokens.numpy() == Vocabulary.pad_id).any()
    summed, correct, count = loss.forced_sums(model, architecture.head, inputs, tokens)
    targets = tokens[:, 1:].numpy()
    logits = model([inputs, tokens[:, :-1]])["logits"].numpy()
    real = targets != Vocabulary.pad_id
    log_probabilities = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_probabilities, targets[..., None], -1)[..., 0]
    assert float(count) == real.sum()
    assert float(summed) == pytest.approx(-picked[real].sum(), rel=1e-5)
    assert float(correct) == (logits.argmax(-1) == targets)[real].sum()


def test_attention_penalty_is_zero_when_every_cell_gets_one_unit():
    targets = tf.constant([[5, 2, 0]])
    spread = tf.constant([[[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]])  # the padded step does not count
    assert float(loss.attention_penalty(targets, spread)) == pytest.approx(0.0)
    focused = tf.constant([[[1.0, 0.0], [1.0, 0.0], [0.5, 0.5]]])
    assert float(loss.attention_penalty(targets, focused)) == pytest.approx((1.0 + 1.0) / 2)
