"""Caption generation from a trained decoder, batched over images."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from captioner.decoder import Stepper


def greedy(
    stepper: Stepper,
    read: Callable[[np.ndarray], np.ndarray],
    rows: np.ndarray,
    start_id: int,
    end_id: int,
    max_len: int,
    batch_size: int = 256,
) -> np.ndarray:
    """Token ids (N × max_len) of the most likely next word at every step, for the images at ``rows``.

    Features are read one batch of images at a time; a row stops changing once it has emitted ``end_id``.
    """
    import tensorflow as tf

    generated = np.full((len(rows), max_len), end_id, dtype=np.int32)
    for begin in range(0, len(rows), batch_size):
        features = tf.constant(read(np.asarray(rows[begin : begin + batch_size])))
        states = stepper.start(features)
        tokens = tf.fill([len(features)], start_id)
        finished = np.zeros(len(features), dtype=bool)
        for position in range(max_len):
            logits, states, _ = stepper.step(tokens, states)
            tokens = tf.argmax(logits, axis=-1, output_type=tf.int32)
            chosen = tokens.numpy()
            generated[begin : begin + len(features), position] = np.where(finished, end_id, chosen)
            finished |= chosen == end_id
            if finished.all():
                break
    return generated
