"""Caption generation from a trained decoder: greedy decoding, sampling and beam search.

Each is one compiled TensorFlow loop over tokens (``Loops``: a ``tf.while_loop`` inside a ``tf.function``),
batched over images and beams, so a whole batch decodes in one TensorFlow call. A step's only work outside the
decoder is an argmax, a draw or one top-k over each image's beams × vocabulary. The same loops serve evaluate,
dev scoring, self-critical sampling, the caption command and the exported model (``captioner.export``).

What is decoded is set by one ``DecodeSettings`` (the ``evaluate`` params); what comes back is a ``Decoded``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np

from captioner import CaptionerError
from captioner import params as param_rules
from captioner.files import progress
from captioner.model.decoder import Steppable
from captioner.text import SpecialIds, Vocabulary


@param_rules.settings("evaluate")
class DecodeSettings:
    """How captions are decoded: beam width (1: greedy), the most tokens, the final ranking's length penalty; the
    ``evaluate`` params, with their defaults."""


class Decoded(NamedTuple):
    """Decoded captions: token ids (N × max_len), each row ``end`` from its first ``end`` on; with beam search the
    summed log-probability of each; with greedy decoding asked for it, each step's attention weights over the grid
    (N × max_len × cells, zero after the caption's end)."""

    ids: np.ndarray
    log_probs: np.ndarray | None = None
    attention: np.ndarray | None = None


class GreedyState(NamedTuple):
    """The greedy and sampling loop's variables: the rows still writing (``active``) and their tokens and states."""

    position: object
    tokens: object
    active: object
    states: list
    ids: object  # every row's tokens so far (count × max_len), the end id where none was written
    weights: object  # a TensorArray: each step's attention weights of every row


class BeamState(NamedTuple):
    """The beam loop's variables: the images still searching (``active``) with their beams' tokens and states, and
    every image's beams (scores, sequences, lengths, whether each has ended)."""

    position: object
    tokens: object
    states: list
    active: object
    scores: object
    sequences: object
    lengths: object
    finished: object


class Loops:
    """The compiled decoding loops of one ``Steppable`` (a model's ``Stepper`` or an ensemble's) for the special ids
    ``ids``. Each takes a batch of features and ``max_len`` (the most tokens generated) and returns token ids
    (N × max_len): a row holds the end id from its first end on, and the loop stops once every row (or beam) has
    ended."""

    def __init__(self, stepper: Steppable, ids: SpecialIds):
        import tensorflow as tf

        self.stepper, self.ids = stepper, ids
        # Signatures with any batch size, length and width: one trace each, whatever the calls.
        features, number = stepper.features, lambda dtype: tf.TensorSpec((), dtype)
        self.greedy = tf.function(self._greedy, input_signature=[features, number(tf.int32)])
        self.sample = tf.function(self._sample, input_signature=[features, number(tf.int32), number(tf.int64)])
        self.beam_search = tf.function(
            self._beam_search, input_signature=[features, number(tf.int32), number(tf.int32), number(tf.float32)]
        )

    def _greedy(self, features, max_len) -> dict:
        """``ids``: the most likely word at every step; ``attention`` (N × max_len × grid cells, zero after the
        last step) when the decoder attends."""
        import tensorflow as tf

        return self._decode(features, max_len, lambda logits, position: tf.argmax(logits, -1, output_type=tf.int32))

    def _sample(self, features, max_len, seed) -> dict:
        """``ids``: each word drawn from the model's distribution given the words before, by a stateless generator
        keyed on (``seed``, step), so a seed repeats its draws. The pad id is never drawn (it would read as the
        caption's end in training)."""
        import tensorflow as tf

        def draw(logits, position):
            padding = tf.range(tf.shape(logits)[-1]) == self.ids.pad
            logits = tf.where(padding, tf.constant(-np.inf, logits.dtype), logits)
            key = tf.stack([tf.cast(seed, tf.int64), tf.cast(position, tf.int64)])
            return tf.random.stateless_categorical(logits, 1, seed=key, dtype=tf.int32)[:, 0]

        return self._decode(features, max_len, draw)

    def _decode(self, features, max_len, choose: Callable) -> dict:
        """The loop of greedy decoding and sampling: each step's tokens are ``choose(logits, step)``. A row that has
        ended leaves the batch (``active``: the rows still writing), so a step costs only the unfinished rows."""
        import tensorflow as tf

        count, end_id, attends = tf.shape(features)[0], self.ids.end, self.stepper.attends
        # Written in place rather than stacked per step and transposed: an integer transpose makes oneDNN log an
        # ERROR line on some AVX-512 CPUs.
        ids = tf.fill(tf.stack([count, max_len]), end_id)
        weights = tf.TensorArray(tf.float32, size=0, dynamic_size=True, element_shape=[None, None])

        def step(now: GreedyState) -> tuple[GreedyState]:
            logits, states, alpha = self.stepper.step(now.tokens, now.states)
            tokens, rows, weights = choose(logits, now.position), tf.expand_dims(now.active, 1), now.weights
            at = tf.concat([rows, tf.fill(tf.shape(rows), now.position)], axis=1)
            ids = tf.tensor_scatter_nd_update(now.ids, at, tokens)
            if attends:
                grid = tf.zeros(tf.stack([count, tf.shape(alpha)[1]]))
                alpha = tf.tensor_scatter_nd_update(grid, rows, tf.cast(alpha, tf.float32))
                weights = weights.write(now.position, alpha)
            going_on = tf.where(tokens != end_id)[:, 0]
            states = [tf.gather(state, going_on) for state in states]
            kept = {"tokens": tf.gather(tokens, going_on), "active": tf.gather(now.active, going_on)}
            return (GreedyState(now.position + 1, states=states, ids=ids, weights=weights, **kept),)

        def going(now: GreedyState):
            return (now.position < max_len) & (tf.size(now.active) > 0)

        start = GreedyState(
            0, tf.fill([count], self.ids.start), tf.range(count), self.stepper.start(features, max_len), ids, weights
        )
        (end,) = tf.while_loop(going, step, (start,))
        padding = [[0, 0], [0, max_len - end.position]]
        decoded = {"ids": end.ids}
        if attends:
            decoded["attention"] = tf.pad(tf.transpose(end.weights.stack(), (1, 0, 2)), [*padding, [0, 0]])
        return decoded

    def _beam_search(self, features, max_len, width, length_penalty) -> dict:
        """``ids`` and ``log_prob`` (summed) of each image's best caption by beam search over images × ``width``
        beams. Beams are ranked by summed log-probability while searching; a beam that has emitted ``end_id``
        stays finished, keeping its score and place. At the end each image's beams are ranked by log-probability
        ÷ length**``length_penalty`` (0: none); if none ever ended, the best unfinished one is taken. An image
        whose beams have all ended leaves the batch (``active``: the images still searching)."""
        import tensorflow as tf

        def going(now: BeamState):
            return (now.position < max_len) & (tf.size(now.active) > 0)

        count = tf.shape(features)[0]
        first_only = tf.concat([[0.0], tf.fill([width - 1], -np.inf)], 0)  # every beam starts identical: expand one
        start = BeamState(
            0,
            tf.fill([count * width], self.ids.start),
            self.stepper.start(tf.repeat(features, width, axis=0), max_len),
            tf.range(count),
            tf.tile(tf.expand_dims(first_only, 0), [count, 1]),
            tf.fill([count, width, max_len], self.ids.end),
            tf.zeros([count, width], tf.int32),
            tf.zeros([count, width], tf.bool),
        )
        (end,) = tf.while_loop(going, self._beam_step(max_len, width), (start,))
        scores, sequences, lengths = end.scores, end.sequences, end.lengths
        ranked = scores / tf.cast(tf.maximum(lengths, 1), tf.float32) ** length_penalty
        best = tf.argmax(tf.where(tf.math.is_finite(scores), ranked, -np.inf), axis=1, output_type=tf.int32)
        return {"ids": tf.gather(sequences, best, batch_dims=1), "log_prob": tf.gather(scores, best, batch_dims=1)}

    def _beam_step(self, max_len, width) -> Callable:
        """One step of ``_beam_search`` for the active images' beams; the scores, sequences, lengths and finished
        flags of every image, updated at the active ones."""
        import tensorflow as tf

        end_id = self.ids.end

        def step(now: BeamState) -> tuple[BeamState]:
            logits, states, _ = self.stepper.step(now.tokens, now.states)
            active = now.active
            # Sizes from the logits, not from the shrinking loop variables: in a caller whose batch is static
            # (TensorFlow Lite's one image), the graph optimiser takes a loop variable's size for its first one.
            beams, vocab_size = tf.shape(logits)[0], tf.shape(logits)[1]
            log_probs = tf.reshape(tf.nn.log_softmax(tf.cast(logits, tf.float32)), [beams // width, width, vocab_size])
            rows, finished_before = tf.expand_dims(active, 1), tf.gather(now.finished, active)
            # A finished beam may only "emit" end again, at no cost.
            ended = tf.one_hot(end_id, vocab_size, on_value=0.0, off_value=-np.inf)
            log_probs = tf.where(tf.expand_dims(finished_before, -1), ended, log_probs)
            candidates = tf.reshape(tf.expand_dims(tf.gather(now.scores, active), -1) + log_probs, [beams // width, -1])
            # top_k puts the lower index first among equals: a stable sort's order, so ties break as they always did.
            best, chosen = tf.math.top_k(candidates, k=width)
            source, token = chosen // vocab_size, chosen % vocab_size
            was_finished = tf.gather(finished_before, source, batch_dims=1)
            token = tf.where(was_finished, end_id, token)
            length = tf.gather(tf.gather(now.lengths, active), source, batch_dims=1) + tf.cast(~was_finished, tf.int32)
            kept = tf.gather(tf.gather(now.sequences, active), source, batch_dims=1)
            written = tf.where(tf.range(max_len) == now.position, tf.expand_dims(token, -1), kept)
            now_finished = was_finished | (token == end_id)
            updated = {
                name: tf.tensor_scatter_nd_update(getattr(now, name), rows, new)
                for name, new in (
                    ("scores", best),
                    ("sequences", written),
                    ("lengths", length),
                    ("finished", now_finished),
                )
            }
            searching = tf.where(~tf.reduce_all(now_finished, axis=1))[:, 0]  # of the active images
            beams = tf.gather(source, searching) + tf.expand_dims(tf.cast(searching, tf.int32), 1) * width
            states = [tf.gather(state, tf.reshape(beams, [-1])) for state in states]
            tokens = tf.reshape(tf.gather(token, searching), [-1])
            searched = BeamState(now.position + 1, tokens, states, tf.gather(active, searching), **updated)
            return (searched,)

        return step


_loops: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # stepper → {special ids: Loops}


def check_length(stepper: Steppable, max_len: int) -> None:
    """A CaptionerError unless ``stepper`` can decode ``max_len`` tokens (a transformer has ``context`` positions)."""
    if stepper.context is not None and max_len > stepper.context:
        raise CaptionerError(
            f"max_len {max_len} is more tokens than the transformer's {stepper.context} positions "
            "(decoder.context): lower evaluate.max_len (or --max-len), or retrain with a larger context"
        )


def loops(stepper: Steppable, ids: SpecialIds = Vocabulary.special) -> Loops:
    """The compiled loops of ``stepper`` for the special ``ids``, made (and traced) once for the pair, so repeated
    calls never retrace."""
    made = _loops.setdefault(stepper, {})
    if ids not in made:
        made[ids] = Loops(stepper, ids)
    return made[ids]


def batch_starts(count: int, batch_size: int, description: str) -> Iterator[int]:
    """The first index of each batch, behind a progress bar counting images (on a terminal, for long runs)."""
    with progress(total=count, desc=description, unit="image", leave=False) as bar:
        for begin in range(0, count, batch_size):
            yield begin
            bar.update(min(batch_size, count - begin))


Reader = Callable[[np.ndarray], np.ndarray]  # feature rows → the features the stepper starts from


def _batched(decode: Callable, read: Reader, rows: np.ndarray, batch_size: int, description: str) -> dict:
    """``decode(features)``'s outputs for the images at ``rows``, read and decoded ``batch_size`` images at a time."""
    batches = [
        {key: value.numpy() for key, value in decode(read(np.asarray(rows[begin : begin + batch_size]))).items()}
        for begin in batch_starts(len(rows), batch_size, description)
    ]
    return {key: np.concatenate([batch[key] for batch in batches]) for key in batches[0]} if batches else {}


def decode(
    stepper: Steppable, read: Reader, rows: np.ndarray, settings: DecodeSettings, batch_size: int = 256
) -> Decoded:
    """The captions of the images at ``rows`` as ``settings`` say: greedy for beam width 1, else beam search."""
    if settings.beam_size == 1:
        return greedy(stepper, read, rows, settings.max_len, batch_size)
    return beam_search(stepper, read, rows, settings, batch_size)


def greedy(
    stepper: Steppable, read: Reader, rows: np.ndarray, max_len: int, batch_size: int = 256, attention: bool = False
) -> Decoded:
    """The most likely next word at every step, up to ``max_len`` tokens, for the images at ``rows``, their features
    read ``batch_size`` images at a time; with ``attention``, an attending stepper's weights too."""
    check_length(stepper, max_len)
    compiled = loops(stepper).greedy
    decoded = _batched(lambda features: compiled(features, max_len), read, rows, batch_size, "greedy decoding")
    if not decoded:
        return Decoded(np.full((0, max_len), Vocabulary.end_id, dtype=np.int32))
    return Decoded(decoded["ids"], attention=decoded.get("attention") if attention else None)


def sample(stepper: Steppable, features: np.ndarray, max_len: int, rng: np.random.Generator) -> np.ndarray:
    """Token ids (N × max_len), each word drawn from the model's distribution given the words before (never the pad
    id); the end id after a row's first end. ``rng`` seeds the draws, so a seeded run repeats them."""
    check_length(stepper, max_len)
    seed = int(rng.integers(2**62))
    return loops(stepper).sample(features, max_len, seed)["ids"].numpy()


def beam_search(
    stepper: Steppable, read: Reader, rows: np.ndarray, settings: DecodeSettings, batch_size: int = 64
) -> Decoded:
    """Best token ids and their log-probabilities by beam search (``Loops.beam_search``) as ``settings`` say, for the
    images at ``rows``, ``batch_size`` images at a time."""
    check_length(stepper, settings.max_len)
    compiled, beam = loops(stepper).beam_search, (settings.max_len, settings.beam_size, float(settings.length_penalty))
    decoded = _batched(
        lambda features: compiled(features, *beam), read, rows, batch_size, f"beam search (beam {settings.beam_size})"
    )
    if not decoded:
        return Decoded(np.full((0, settings.max_len), Vocabulary.end_id, dtype=np.int32), np.zeros(0, np.float32))
    return Decoded(decoded["ids"], decoded["log_prob"])
