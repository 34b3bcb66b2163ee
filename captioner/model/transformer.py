"""The Transformer decoder's layers (``captioner.model.decoder.Transformer`` wires them): positions, and pre-layer-norm
blocks of causal self-attention over the words, cross-attention over the image's cells and a feed-forward net,
each a residual branch (Vaswani et al. 2017, normalised before each branch as in GPT-2).

A block runs two ways that share its layers: ``call`` over whole captions (training: every position at once under
a causal mask) and ``step`` over one position, whose keys and values it writes into a cache of ``context``
positions, so a decoding step costs one position, not the whole prefix. The cache has a fixed size, not one that
grows: the decoding loops carry it with one shape, and TensorFlow Lite runs it.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

MASKED = -1e4  # a masked score: its exp() is 0 in float32 and float16, and a row is never all masked


def repeated(rows, times: int):
    """Each row ``times`` times in a row: (B, …) → (B·times, …). A broadcast and a reshape rather than
    ``ops.repeat``: with a free batch dimension the gradient of TensorFlow's repeat (or tile) logs a spurious oneDNN
    "DT_INT32" error line."""
    if times == 1:
        return rows
    shape = ops.shape(rows)
    return ops.reshape(ops.broadcast_to(ops.expand_dims(rows, 1), (shape[0], times, *shape[1:])), (-1, *rows.shape[1:]))


def sinusoids(context: int, units: int) -> np.ndarray:
    """The fixed position encodings of Vaswani et al.: sines and cosines of geometrically spaced wavelengths."""
    angles = np.arange(context)[:, None] / 10000.0 ** (np.arange(0, units, 2) / units)
    table = np.zeros((context, units), np.float32)
    table[:, 0::2], table[:, 1::2] = np.sin(angles), np.cos(angles[:, : units // 2])
    return table


@keras.saving.register_keras_serializable(package="captioner")
class Positions(layers.Layer):
    """Adds each position's encoding: learned (a trained table) or sinusoidal (fixed)."""

    def __init__(self, context: int, units: int, kind: str, **kwargs):
        super().__init__(**kwargs)
        self.context, self.units, self.kind = context, units, kind

    def build(self, shape=None):
        if self.kind == "learned":
            self.table = self.add_weight((self.context, self.units), initializer="random_normal", name="table")
        else:
            self.table = ops.convert_to_tensor(sinusoids(self.context, self.units))
        self.built = True

    def call(self, words):
        """``words``: [B, T, units], positions 0…T-1."""
        return words + ops.cast(self.table[: ops.shape(words)[1]], words.dtype)

    def at(self, words, position):
        """``words``: [B, 1, units], each row at its ``position`` ([B])."""
        return words + ops.cast(ops.take(self.table, position, axis=0), words.dtype)[:, None]

    def get_config(self):
        return super().get_config() | {"context": self.context, "units": self.units, "kind": self.kind}


def attend(query, keys, values, heads: int, allowed=None) -> tuple:
    """Multi-head scaled dot-product attention: (the heads' outputs side by side [B, Tq, units], the weights
    [B, heads, Tq, Tk]). ``allowed``: where a query may look (broadcast to the weights' shape), or None."""
    size = query.shape[-1] // heads

    def split(x):  # [B, T, units] → [B, heads, T, size]; the batch and length may be unknown, the rest not
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        return ops.transpose(ops.reshape(x, (batch, length, heads, size)), (0, 2, 1, 3))

    scores = ops.matmul(split(query), ops.transpose(split(keys), (0, 1, 3, 2))) / np.sqrt(size).astype("float32")
    if allowed is not None:
        scores = ops.where(allowed, scores, ops.cast(MASKED, scores.dtype))
    weights = ops.softmax(scores, axis=-1)
    mixed = ops.transpose(ops.matmul(weights, split(values)), (0, 2, 1, 3))
    return ops.reshape(mixed, (ops.shape(mixed)[0], ops.shape(mixed)[1], heads * size)), weights


@keras.saving.register_keras_serializable(package="captioner")
class DecoderBlock(layers.Layer):
    """One pre-layer-norm Transformer decoder block: x + SelfAttention(LN x), + CrossAttention(LN x, image),
    + FeedForward(LN x), each branch dropped out while training."""

    def __init__(self, units: int, heads: int, ff_units: int, dropout: float, **kwargs):
        super().__init__(**kwargs)
        self.units, self.heads, self.ff_units, self.rate = units, heads, ff_units, dropout
        self.self_norm = layers.LayerNormalization(epsilon=1e-5, name="self_norm")
        self.self_qkv = layers.Dense(3 * units, name="self_qkv")
        self.self_out = layers.Dense(units, name="self_out")
        self.cross_norm = self.cross_query = None  # made by ``build`` if the image has cells to choose between
        self.cross_kv = layers.Dense(2 * units, name="cross_kv")
        self.cross_out = layers.Dense(units, name="cross_out")
        self.ff_norm = layers.LayerNormalization(epsilon=1e-5, name="ff_norm")
        self.ff_hidden = layers.Dense(ff_units, activation="gelu", name="ff_hidden")
        self.ff_out = layers.Dense(units, name="ff_out")
        self.dropout = layers.Dropout(dropout, name="dropout")

    def build(self, words_shape, image_shape):
        if image_shape[1] != 1:  # one cell (a pooled image) takes all the weight: no query to ask it with
            self.cross_norm = layers.LayerNormalization(epsilon=1e-5, name="cross_norm")
            self.cross_query = layers.Dense(self.units, name="cross_query")
        sublayers = [self.self_norm, self.cross_norm, self.ff_norm, self.self_qkv, self.self_out, self.cross_query]
        for layer in [*sublayers, self.cross_kv, self.cross_out, self.ff_hidden]:
            if layer is not None:
                layer.build((None, None, self.units))
        self.ff_out.build((None, None, self.ff_units))
        self.built = True

    def image_memory(self, image) -> list:
        """The cross-attention's keys and values of the image's cells ([B, cells, units] each): once per image."""
        return ops.split(self.cross_kv(image), 2, axis=-1)

    def call(self, words, image, captions_per_image=1, training=None):
        """Every position of ``words`` ([B, T, units]) at once, each seeing itself and the positions before, and the
        ``image``'s cells: one image a row, or one per ``captions_per_image`` rows (its keys and values computed once
        and repeated)."""
        query, keys, values = ops.split(self.self_qkv(self.self_norm(words)), 3, axis=-1)
        positions = ops.arange(ops.shape(words)[1])
        causal = positions[:, None] >= positions[None, :]
        words = self.residual(words, self.self_out(attend(query, keys, values, self.heads, causal)[0]), training)
        memory = [repeated(part, captions_per_image) for part in self.image_memory(image)]
        words, _ = self.cross(words, *memory, training=training)
        return self.feed_forward(words, training)

    def step(self, words, position, cache: list, image_memory: list) -> tuple:
        """One position per row (``words`` [B, 1, units] at ``position`` [B]), its keys and values written into
        ``cache`` ([keys, values], each [B, context, units]): (output, new cache, cross-attention weights)."""
        query, key, value = ops.split(self.self_qkv(self.self_norm(words)), 3, axis=-1)
        context = ops.shape(cache[0])[1]
        here = ops.expand_dims(ops.one_hot(position, context) > 0, -1)  # [B, context, 1]
        keys, values = (ops.where(here, new, old) for new, old in zip((key, value), cache, strict=True))
        seen = ops.arange(context)[None, :] <= position[:, None]  # [B, context]: this position and the ones before
        words = self.residual(words, self.self_out(attend(query, keys, values, self.heads, seen[:, None, None, :])[0]))
        words, weights = self.cross(words, *image_memory)
        return self.feed_forward(words), [keys, values], weights

    def residual(self, words, branch, training=None):
        return words + self.dropout(branch, training=training)

    def cross(self, words, image_keys, image_values, training=None) -> tuple:
        """(words after the cross-attention branch, its weights over the cells; None for a one-cell image)."""
        if self.cross_query is None:  # every position reads the one cell's value
            return self.residual(words, self.cross_out(image_values), training), None
        mixed, weights = attend(self.cross_query(self.cross_norm(words)), image_keys, image_values, self.heads)
        return self.residual(words, self.cross_out(mixed), training), weights

    def feed_forward(self, words, training=None):
        return self.residual(words, self.ff_out(self.ff_hidden(self.ff_norm(words))), training)

    def compute_output_shape(self, words_shape, image_shape=None):
        return words_shape

    def get_config(self):
        return super().get_config() | {
            "units": self.units,
            "heads": self.heads,
            "ff_units": self.ff_units,
            "dropout": self.rate,
        }
