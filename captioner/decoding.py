"""Caption generation from a trained decoder: greedy decoding, sampling and beam search.

Each is one compiled TensorFlow loop over tokens (``Loops``: a ``tf.while_loop`` inside a ``tf.function``),
batched over images and beams, so a whole batch decodes in one TensorFlow call. A step's only work outside the
decoder is an argmax, a draw or one top-k over each image's beams × vocabulary. The same loops serve evaluate,
dev scoring, self-critical sampling, the caption command and the exported model (``captioner.export``).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator

import numpy as np

from captioner import CaptionerError, metrics
from captioner.decoder import StepwiseDecoder
from captioner.files import progress
from captioner.text import Vocabulary


class Loops:
    """The compiled decoding loops of one ``StepwiseDecoder`` (a model's ``Stepper`` or an ensemble's). Each takes a
    batch of features and ``max_len`` (the most tokens generated) and returns token ids (N × max_len): a row holds
    ``end_id`` from its first ``end_id`` on, and the loop stops once every row (or beam) has ended."""

    def __init__(self, decoder: StepwiseDecoder, start_id: int, end_id: int):
        import tensorflow as tf

        self.decoder, self.start_id, self.end_id = decoder, start_id, end_id
        # Signatures with any batch size, length and width: one trace each, whatever the calls.
        features, number = decoder.features, lambda dtype: tf.TensorSpec((), dtype)
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
            padding = tf.range(tf.shape(logits)[-1]) == Vocabulary.pad_id
            logits = tf.where(padding, tf.constant(-np.inf, logits.dtype), logits)
            key = tf.stack([tf.cast(seed, tf.int64), tf.cast(position, tf.int64)])
            return tf.random.stateless_categorical(logits, 1, seed=key, dtype=tf.int32)[:, 0]

        return self._decode(features, max_len, draw)

    def _decode(self, features, max_len, choose: Callable) -> dict:
        """The loop of greedy decoding and sampling: each step's tokens are ``choose(logits, step)``. A row that has
        ended leaves the batch (``active``: the rows still writing), so a step costs only the unfinished rows."""
        import tensorflow as tf

        count, end_id, attends = tf.shape(features)[0], self.end_id, self.decoder.attends
        ids = tf.TensorArray(tf.int32, size=0, dynamic_size=True, element_shape=[None])
        weights = tf.TensorArray(tf.float32, size=0, dynamic_size=True, element_shape=[None, None])

        def step(position, tokens, active, states, ids, weights):
            logits, states, alpha = self.decoder.step(tokens, states)
            tokens, rows = choose(logits, position), tf.expand_dims(active, 1)
            ids = ids.write(position, tf.tensor_scatter_nd_update(tf.fill([count], end_id), rows, tokens))
            if attends:
                grid = tf.zeros(tf.stack([count, tf.shape(alpha)[1]]))
                weights = weights.write(position, tf.tensor_scatter_nd_update(grid, rows, tf.cast(alpha, tf.float32)))
            going_on = tf.where(tokens != end_id)[:, 0]
            states = [tf.gather(state, going_on) for state in states]
            return position + 1, tf.gather(tokens, going_on), tf.gather(active, going_on), states, ids, weights

        def going(position, tokens, active, *_):
            return (position < max_len) & (tf.size(active) > 0)

        start = (0, tf.fill([count], self.start_id), tf.range(count), self.decoder.start(features))
        steps, *_, ids, weights = tf.while_loop(going, step, (*start, ids, weights))
        padding = [[0, 0], [0, max_len - steps]]
        decoded = {"ids": tf.pad(tf.transpose(ids.stack()), padding, constant_values=end_id)}
        if attends:
            decoded["attention"] = tf.pad(tf.transpose(weights.stack(), (1, 0, 2)), [*padding, [0, 0]])
        return decoded

    def _beam_search(self, features, max_len, width, length_penalty) -> dict:
        """``ids`` and ``log_prob`` (summed) of each image's best caption by beam search over images × ``width``
        beams. Beams are ranked by summed log-probability while searching; a beam that has emitted ``end_id``
        stays finished, keeping its score and place. At the end each image's beams are ranked by log-probability
        ÷ length**``length_penalty`` (0: none); if none ever ended, the best unfinished one is taken. An image
        whose beams have all ended leaves the batch (``active``: the images still searching)."""
        import tensorflow as tf

        def going(position, tokens, states, active, *_):
            return (position < max_len) & (tf.size(active) > 0)

        count = tf.shape(features)[0]
        first_only = tf.concat([[0.0], tf.fill([width - 1], -np.inf)], 0)  # every beam starts identical: expand one
        start = (
            0,
            tf.fill([count * width], self.start_id),
            self.decoder.start(tf.repeat(features, width, axis=0)),
            tf.range(count),
            tf.tile(tf.expand_dims(first_only, 0), [count, 1]),
            tf.fill([count, width, max_len], self.end_id),
            tf.zeros([count, width], tf.int32),
            tf.zeros([count, width], tf.bool),
        )
        *_, scores, sequences, lengths, _ = tf.while_loop(going, self._beam_step(max_len, width), start)
        ranked = scores / tf.cast(tf.maximum(lengths, 1), tf.float32) ** length_penalty
        best = tf.argmax(tf.where(tf.math.is_finite(scores), ranked, -np.inf), axis=1, output_type=tf.int32)
        return {"ids": tf.gather(sequences, best, batch_dims=1), "log_prob": tf.gather(scores, best, batch_dims=1)}

    def _beam_step(self, max_len, width) -> Callable:
        """One step of ``_beam_search`` for the active images' beams; the scores, sequences, lengths and finished
        flags of every image, updated at the active ones."""
        import tensorflow as tf

        end_id = self.end_id

        def step(position, tokens, states, active, scores, sequences, lengths, finished):
            logits, states, _ = self.decoder.step(tokens, states)
            # Sizes from the logits, not from the shrinking loop variables: in a caller whose batch is static
            # (TensorFlow Lite's one image), the graph optimiser takes a loop variable's size for its first one.
            beams, vocab_size = tf.shape(logits)[0], tf.shape(logits)[1]
            log_probs = tf.reshape(tf.nn.log_softmax(tf.cast(logits, tf.float32)), [beams // width, width, vocab_size])
            rows, finished_before = tf.expand_dims(active, 1), tf.gather(finished, active)
            # A finished beam may only "emit" end again, at no cost.
            ended = tf.one_hot(end_id, vocab_size, on_value=0.0, off_value=-np.inf)
            log_probs = tf.where(tf.expand_dims(finished_before, -1), ended, log_probs)
            candidates = tf.reshape(tf.expand_dims(tf.gather(scores, active), -1) + log_probs, [beams // width, -1])
            # top_k puts the lower index first among equals: a stable sort's order, so ties break as they always did.
            best, chosen = tf.math.top_k(candidates, k=width)
            source, token = chosen // vocab_size, chosen % vocab_size
            was_finished = tf.gather(finished_before, source, batch_dims=1)
            token = tf.where(was_finished, end_id, token)
            length = tf.gather(tf.gather(lengths, active), source, batch_dims=1) + tf.cast(~was_finished, tf.int32)
            kept = tf.gather(tf.gather(sequences, active), source, batch_dims=1)
            written = tf.where(tf.range(max_len) == position, tf.expand_dims(token, -1), kept)
            now_finished = was_finished | (token == end_id)
            scores = tf.tensor_scatter_nd_update(scores, rows, best)
            sequences = tf.tensor_scatter_nd_update(sequences, rows, written)
            lengths = tf.tensor_scatter_nd_update(lengths, rows, length)
            finished = tf.tensor_scatter_nd_update(finished, rows, now_finished)
            searching = tf.where(~tf.reduce_all(now_finished, axis=1))[:, 0]  # of the active images
            beams = tf.gather(source, searching) + tf.expand_dims(tf.cast(searching, tf.int32), 1) * width
            states = [tf.gather(state, tf.reshape(beams, [-1])) for state in states]
            tokens = tf.reshape(tf.gather(token, searching), [-1])
            return position + 1, tokens, states, tf.gather(active, searching), scores, sequences, lengths, finished

        return step


_loops: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def check_length(decoder: StepwiseDecoder, max_len: int) -> None:
    """A CaptionerError unless ``decoder`` can decode ``max_len`` tokens (a transformer has ``context`` positions)."""
    if decoder.context is not None and max_len > decoder.context:
        raise CaptionerError(
            f"max_len {max_len} is more tokens than the transformer's {decoder.context} positions "
            "(decoder.context): lower evaluate.max_len (or --max-len), or retrain with a larger context"
        )


def loops(decoder: StepwiseDecoder, start_id: int = Vocabulary.start_id, end_id: int = Vocabulary.end_id) -> Loops:
    """The compiled loops of ``decoder``, made (and traced) once for it, so repeated calls never retrace."""
    if decoder not in _loops:
        _loops[decoder] = Loops(decoder, start_id, end_id)
    return _loops[decoder]


def batch_starts(count: int, batch_size: int, description: str) -> Iterator[int]:
    """The first index of each batch, behind a progress bar counting images (on a terminal, for long runs)."""
    with progress(total=count, desc=description, unit="image", leave=False) as bar:
        for begin in range(0, count, batch_size):
            yield begin
            bar.update(min(batch_size, count - begin))


def _batched(
    decode: Callable, read: Callable[[np.ndarray], np.ndarray], rows: np.ndarray, batch_size: int, description: str
) -> dict[str, np.ndarray]:
    """``decode(features)``'s outputs for the images at ``rows``, read and decoded ``batch_size`` images at a time."""
    batches = [
        {key: value.numpy() for key, value in decode(read(np.asarray(rows[begin : begin + batch_size]))).items()}
        for begin in batch_starts(len(rows), batch_size, description)
    ]
    return {key: np.concatenate([batch[key] for batch in batches]) for key in batches[0]} if batches else {}


def greedy(
    stepper: StepwiseDecoder,
    read: Callable[[np.ndarray], np.ndarray],
    rows: np.ndarray,
    start_id: int,
    end_id: int,
    max_len: int,
    batch_size: int = 256,
    attention: list | None = None,
) -> np.ndarray:
    """Token ids (N × max_len) of the most likely next word at every step, for the images at ``rows``.

    Features are read one batch of images at a time; a row stops changing once it has emitted
    ``end_id``. For an attention decoder, pass a list as ``attention`` to receive each image's
    weights over the grid at every step (max_len × H·W).
    """
    check_length(stepper, max_len)
    compiled = loops(stepper, start_id, end_id).greedy
    decoded = _batched(lambda features: compiled(features, max_len), read, rows, batch_size, "greedy decoding")
    if attention is not None and "attention" in decoded:
        attention.extend(decoded["attention"])
    return decoded["ids"] if decoded else np.full((0, max_len), end_id, dtype=np.int32)


def sample(
    stepper: StepwiseDecoder,
    features: np.ndarray,
    start_id: int,
    end_id: int,
    max_len: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Token ids (N × max_len), each word drawn from the model's distribution given the words before (never the pad
    id); ``end_id`` after a row's first ``end_id``. ``rng`` seeds the draws, so a seeded run repeats them."""
    check_length(stepper, max_len)
    seed = int(rng.integers(2**62))
    return loops(stepper, start_id, end_id).sample(features, max_len, seed)["ids"].numpy()


def greedy_scores(
    stepper: StepwiseDecoder,
    read: Callable[[np.ndarray], np.ndarray],
    rows: np.ndarray,
    references: list[list[list[str]]],
    vocab: Vocabulary,
    max_len: int,
    batch_size: int = 256,
    cider: metrics.CiderD | None = None,
) -> dict[str, float]:
    """Corpus BLEU-4 (``bleu4``) and CIDEr-D (``cider``, the mean over images) of the greedy captions of the
    images at ``rows`` against their ``references`` (word lists). ``cider``: a ``metrics.CiderD`` of the same
    references, to reuse its document frequencies across calls (~0.5 s for Flickr8k's 1,000 dev images)."""
    generated = greedy(stepper, read, rows, vocab.start_id, vocab.end_id, max_len, batch_size)
    captions = [vocab.decode(ids) for ids in generated]
    cider = metrics.CiderD(references) if cider is None else cider
    return {
        "bleu4": metrics.corpus_bleu(references, captions)["bleu4"],
        "cider": float(np.mean([cider.score(image, words) for image, words in enumerate(captions)])),
    }


def beam_search(
    stepper: StepwiseDecoder,
    read: Callable[[np.ndarray], np.ndarray],
    rows: np.ndarray,
    start_id: int,
    end_id: int,
    max_len: int,
    beam_size: int,
    length_penalty: float = 0.0,
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """Best token ids (N × max_len) and their log-probabilities by beam search (``Loops.beam_search``), for the
    images at ``rows``, ``batch_size`` images at a time."""
    check_length(stepper, max_len)
    compiled = loops(stepper, start_id, end_id).beam_search
    decoded = _batched(
        lambda features: compiled(features, max_len, beam_size, float(length_penalty)),
        read,
        rows,
        batch_size,
        f"beam search (beam {beam_size})",
    )
    if not decoded:
        return np.full((0, max_len), end_id, dtype=np.int32), np.zeros(0, dtype=np.float32)
    return decoded["ids"], decoded["log_prob"]
