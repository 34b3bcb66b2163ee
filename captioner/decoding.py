"""Caption generation from a trained decoder, batched over images."""

from __future__ import annotations

import numpy as np

from captioner.decoder import Stepper


def greedy(
    stepper: Stepper, features: np.ndarray, start_id: int, end_id: int, max_len: int, batch_size: int = 256
) -> np.ndarray:
    """Token ids (N × max_len) of the most likely next word at every step; rows stop changing after ``end_id``."""
    import tensorflow as tf

    generated = np.zeros((len(features), max_len), dtype=np.int32)
    for begin in range(0, len(features), batch_size):
        chunk = tf.constant(features[begin : begin + batch_size])
        states = stepper.start(chunk)
        tokens = tf.fill([len(chunk)], start_id)
        finished = np.zeros(len(chunk), dtype=bool)
        for position in range(max_len):
            logits, states = stepper.step(tokens, states)
            tokens = tf.argmax(logits, axis=-1, output_type=tf.int32)
            generated[begin : begin + len(chunk), position] = np.where(finished, end_id, tokens.numpy())
            finished |= tokens.numpy() == end_id
            if finished.all():
                generated[begin : begin + len(chunk), position + 1 :] = end_id
                break
    return generated
