"""Today's Python-loop decoding, kept as the plain reference the compiled loops (captioner.model.decoding) must match:
one TensorFlow step call and a NumPy round trip per token, a full stable sort of every beam's candidates."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from captioner.model.decoder import Steppable


def decode(
    stepper: Steppable,
    features,
    start_id: int,
    end_id: int,
    max_len: int,
    choose: Callable[[object], np.ndarray],
    attention: list | None = None,
) -> np.ndarray:
    """Token ids (N × max_len) for one batch of ``features``, each step's tokens picked by ``choose(logits)``;
    a row stops changing (holds ``end_id``) once it has emitted ``end_id``."""
    import tensorflow as tf

    generated = np.full((len(features), max_len), end_id, dtype=np.int32)
    states = stepper.start(tf.constant(features), max_len)
    tokens = np.full(len(features), start_id, dtype=np.int32)
    finished = np.zeros(len(features), dtype=bool)
    steps = []
    for position in range(max_len):
        logits, states, alpha = stepper.step(tf.constant(tokens), states)
        tokens = choose(logits)
        generated[:, position] = np.where(finished, end_id, tokens)
        finished |= tokens == end_id
        if alpha is not None:
            steps.append(alpha.numpy())
        if finished.all():
            break
    if attention is not None and steps:
        padded = np.zeros((len(features), max_len, steps[0].shape[-1]), dtype=np.float32)
        padded[:, : len(steps)] = np.stack(steps, axis=1)
        attention.extend(padded)
    return generated


def most_likely(logits) -> np.ndarray:
    import tensorflow as tf

    return tf.argmax(logits, axis=-1, output_type=tf.int32).numpy()


def greedy(
    stepper: Steppable,
    read: Callable[[np.ndarray], np.ndarray],
    rows: np.ndarray,
    start_id: int,
    end_id: int,
    max_len: int,
    batch_size: int = 256,
) -> np.ndarray:
    """Token ids (N × max_len) of the most likely next word at every step, ``batch_size`` images at a time."""
    batches = [
        decode(stepper, read(rows[begin : begin + batch_size]), start_id, end_id, max_len, most_likely)
        for begin in range(0, len(rows), batch_size)
    ]
    return np.concatenate(batches)


def beam_search(
    stepper: Steppable,
    read: Callable[[np.ndarray], np.ndarray],
    rows: np.ndarray,
    start_id: int,
    end_id: int,
    max_len: int,
    beam_size: int,
    length_penalty: float = 0.0,
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """Best token ids (N × max_len) and their log-probabilities, by beam search over images × beams at once,
    ``batch_size`` images at a time.

    Beams are ranked by summed log-probability while searching; at the end each image's hypotheses
    are ranked by log-probability ÷ length**``length_penalty`` (0: none). A beam that has emitted
    ``end_id`` stays finished; if no beam of an image ever ends, its best unfinished one is taken.
    """
    best = np.full((len(rows), max_len), end_id, dtype=np.int32)
    best_scores = np.zeros(len(rows), dtype=np.float32)
    for begin in range(0, len(rows), batch_size):
        features = read(np.asarray(rows[begin : begin + batch_size]))
        sequences, scores, lengths = beams(stepper, features, start_id, end_id, max_len, beam_size)
        count = len(features)
        ranked = scores / np.maximum(lengths, 1) ** length_penalty
        pick = np.argmax(np.where(np.isfinite(scores), ranked, -np.inf), axis=1)
        best[begin : begin + count] = sequences[np.arange(count), pick]
        best_scores[begin : begin + count] = scores[np.arange(count), pick]
    return best, best_scores


def beams(
    stepper: Steppable, features: np.ndarray, start_id: int, end_id: int, max_len: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``width`` beams of each image of ``features`` when the search ends: their token ids (images × width ×
    max_len), summed log-probabilities and lengths (images × width)."""
    import tensorflow as tf

    count = len(features)
    states = stepper.start(tf.constant(np.repeat(features, width, axis=0)), max_len)  # (count·width, …)
    scores = np.full((count, width), -np.inf, dtype=np.float32)
    scores[:, 0] = 0.0  # every beam starts identical: expand only the first
    sequences = np.full((count, width, max_len), end_id, dtype=np.int32)
    lengths = np.zeros((count, width), dtype=np.int32)
    finished = np.zeros((count, width), dtype=bool)
    tokens = np.full(count * width, start_id, dtype=np.int32)
    for position in range(max_len):
        logits, states, _ = stepper.step(tf.constant(tokens), states)
        log_probs = tf.nn.log_softmax(logits).numpy().reshape(count, width, -1)
        vocab_size = log_probs.shape[-1]
        # A finished beam may only "emit" end again, at no cost, so it keeps its score and place.
        log_probs[finished] = -np.inf
        log_probs[finished, end_id] = 0.0
        candidates = (scores[..., None] + log_probs).reshape(count, -1)
        chosen = np.argsort(-candidates, axis=1, kind="stable")[:, :width]
        source, token = chosen // vocab_size, (chosen % vocab_size).astype(np.int32)
        scores = np.take_along_axis(candidates, chosen, axis=1)
        sequences = np.take_along_axis(sequences, source[..., None], axis=1)
        was_finished = np.take_along_axis(finished, source, axis=1)
        lengths = np.take_along_axis(lengths, source, axis=1) + ~was_finished
        sequences[:, :, position] = np.where(was_finished, end_id, token)
        finished = was_finished | (token == end_id)
        flat = (source + np.arange(count)[:, None] * width).reshape(-1)
        states = [tf.gather(state, flat) for state in states]
        tokens = sequences[:, :, position].reshape(-1)
        if finished.all():
            break
    return sequences, scores, lengths


def sequence_log_prob(
    stepper: Steppable,
    read: Callable[[np.ndarray], np.ndarray],
    rows: np.ndarray,
    sequences: np.ndarray,
    start_id: int,
    end_id: int,
) -> np.ndarray:
    """Summed log-probability of each generated sequence, up to and including its first ``end_id``."""
    import tensorflow as tf

    states = stepper.start(tf.constant(read(np.asarray(rows))), sequences.shape[1])
    tokens = np.full(len(rows), start_id, dtype=np.int32)
    total = np.zeros(len(rows), dtype=np.float64)
    alive = np.ones(len(rows), dtype=bool)
    for position in range(sequences.shape[1]):
        logits, states, _ = stepper.step(tf.constant(tokens), states)
        log_probs = tf.nn.log_softmax(logits).numpy()
        chosen = sequences[:, position]
        total += np.where(alive, log_probs[np.arange(len(rows)), chosen], 0.0)
        alive &= chosen != end_id
        tokens = chosen.astype(np.int32)
    return total
