"""Caption decoders: a GRU or LSTM conditioned on the image by merge, init-inject or soft attention, or a Transformer.

One class per architecture (``ARCHITECTURES``) owns its layers and both ways of running them: ``build``
wires the teacher-forced model, (image features, caption tokens) → next-token logits at every position,
the ``hidden`` vectors they are projected from (and, for attention, the attention weights); ``start`` and
``step`` run the same layers one token at a time for decoding (``Stepper`` compiles them).

- merge: the RNN reads only words; the projected image is added to its outputs.
- init-inject (``inject``): the projected image is the RNN's initial state.
- attention (Show, Attend and Tell): at every step a gated, Bahdanau-scored context vector over
  the H×W feature grid joins the word input; the initial state comes from the mean feature.
- transformer: masked self-attention over the words and cross-attention over the image's cells
  (``captioner.model.transformer``), decoding over a cache of keys and values.
"""

from __future__ import annotations

from typing import Protocol

import keras
import numpy as np
from keras import layers, ops

from captioner.model.spec import ARCHS, RNN_STATES, DecoderSpec
from captioner.model.transformer import DecoderBlock, Positions, repeated

RNNS = {"gru": (layers.GRU, layers.GRUCell), "lstm": (layers.LSTM, layers.LSTMCell)}  # layer, cell (config.RNN_STATES)


@keras.saving.register_keras_serializable(package="captioner")
class PerCaption(layers.Layer):
    """Each image's features once per caption row: (B, …) → (B·captions_per_image, …), image by image: what joins
    a fine-tuned encoder to the decoder (``captioner.training.finetuning.joint_model``), and what repeats the work a
    grid decoder does on an image alone for each of its captions (``Architecture.build_grouped``).
    """

    def __init__(self, captions_per_image: int, **kwargs):
        super().__init__(**kwargs)
        self.captions_per_image = captions_per_image

    def call(self, features):
        return repeated(features, self.captions_per_image)

    def compute_output_shape(self, shape):
        return (None if shape[0] is None else shape[0] * self.captions_per_image, *shape[1:])

    def get_config(self):
        return super().get_config() | {"captions_per_image": self.captions_per_image}


@keras.saving.register_keras_serializable(package="captioner")
class AttentionRNN(layers.Layer):
    """An RNN cell that attends over a feature grid at every step (Xu et al. 2015, soft attention).

    The grid is captured by the time loop rather than carried as a state: Keras 3 RNNs take no
    ``constants=``, and a state would be copied at every step.
    """

    def __init__(self, rnn: str, units: int, attention_units: int, input_dim: int, channels: int, **kwargs):
        super().__init__(**kwargs)
        self.rnn, self.units, self.attention_units = rnn, units, attention_units
        self.input_dim, self.channels = input_dim, channels
        self.cell = RNNS[rnn][1](units, name="cell")
        self.memory_keys = layers.Dense(attention_units, use_bias=False, name="memory_keys")
        self.hidden_query = layers.Dense(attention_units, name="hidden_query")
        self.score = layers.Dense(1, use_bias=False, name="score")
        self.gate = layers.Dense(channels, activation="sigmoid", name="gate")
        self.supports_masking = True

    def build(self, *shapes):
        self.cell.build((None, self.input_dim + self.channels))
        self.memory_keys.build((None, None, self.channels))
        self.hidden_query.build((None, self.units))
        self.score.build((None, None, self.attention_units))
        self.gate.build((None, self.units))
        self.built = True

    def keys(self, memory):
        return self.memory_keys(memory)

    def step(self, word, states, memory, keys):
        """One token: (output, gated context, attention weights over the grid, new states)."""
        hidden = states[0]
        scores = self.score(ops.tanh(keys + ops.expand_dims(self.hidden_query(hidden), 1)))[..., 0]
        alpha = ops.softmax(scores, axis=-1)
        context = self.gate(hidden) * ops.sum(ops.expand_dims(alpha, -1) * memory, axis=1)
        output, new_states = self.cell(ops.concatenate([word, context], axis=-1), list(states))
        return output, context, alpha, list(new_states)

    def call(self, words, memory, states, keys=None, mask=None):
        """Outputs, contexts and attention weights at every step, over ``memory``'s cells and their ``keys``
        (computed here when not given). ``mask`` is accepted and not needed: padding sits after <end>, so its steps
        change nothing the masked loss reads."""
        import tensorflow as tf

        keys = self.keys(memory) if keys is None else keys

        def body(carry, word):
            output, context, alpha, new_states = self.step(word, list(carry[0]), memory, keys)
            return tuple(new_states), ops.concatenate([output, context, alpha], axis=-1)

        width = self.units + self.channels + ops.shape(memory)[1]
        start = (tuple(states), ops.zeros((ops.shape(words)[0], width), dtype=self.compute_dtype))
        _, stacked = tf.scan(body, ops.transpose(words, (1, 0, 2)), initializer=start)
        stacked = ops.transpose(stacked, (1, 0, 2))
        edges = [self.units, self.units + self.channels]
        return stacked[..., : edges[0]], stacked[..., edges[0] : edges[1]], stacked[..., edges[1] :]

    def compute_mask(self, inputs, previous_mask=None):
        return [None, None, None]  # the loss masks padding itself

    def compute_output_shape(self, words_shape, memory_shape, states_shape, keys_shape=None):
        batch, length = words_shape[:2]
        return (batch, length, self.units), (batch, length, self.channels), (batch, length, memory_shape[1])

    def get_config(self):
        return super().get_config() | {
            "rnn": self.rnn,
            "units": self.units,
            "attention_units": self.attention_units,
            "input_dim": self.input_dim,
            "channels": self.channels,
        }


class Architecture:
    """A decoder's layers, wired two ways: ``build`` (the whole caption at once, for training and the teacher-forced
    loss) and ``start`` / ``step`` (one token at a time, for decoding), so the two cannot drift apart.

    Layers are created in ``__init__`` in a fixed order: Keras draws each layer's initial weights when it is
    created, so that order (with ``train.seed``) fixes the trained model.
    """

    def __init__(self, spec: DecoderSpec, vocab_size: int):
        self.spec, self.vocab_size = spec, vocab_size
        self.embedding = self.token_embedding()
        self.embedding_dropout = layers.Dropout(spec.dropout, name="embedding_dropout")
        self.create_layers()
        self.head = self.vocabulary_head()
        self.model: keras.Model | None = None

    @property
    def reads_grid(self) -> bool:
        """Whether the model was built on the feature grid (cells × channels) rather than the pooled vector: fixed
        by the spec for the recurrent decoders, by the features it trained on for the transformer."""
        return len(self.model.inputs[0].shape) == 3

    def token_embedding(self) -> layers.Layer:
        spec = self.spec
        return layers.Embedding(
            self.vocab_size, spec.embedding_dim, mask_zero=True, trainable=spec.train_embeddings, name="embedding"
        )

    def create_layers(self) -> None:
        """The architecture's own layers, between the embedding and the vocabulary projection."""
        raise NotImplementedError

    def vocabulary_head(self):
        """hidden → next-token logits. float32 even under a mixed precision policy: the softmax over the vocabulary
        needs its range."""
        return layers.Dense(self.vocab_size, name="logits", dtype="float32")

    def forward(self, features, words) -> dict:
        """The whole caption at once: ``hidden`` at every position (and ``attention``, if it attends)."""
        raise NotImplementedError

    def start(self, features, length=None) -> list:
        """The states before the first token, for captions of at most ``length`` tokens (a transformer sizes its
        cache by it; None: its whole context)."""
        raise NotImplementedError

    def step(self, tokens, states: list) -> tuple:
        """One token per row: (next-token logits, new states, attention weights or None)."""
        raise NotImplementedError

    def step_words(self, tokens):
        """One step's embedded tokens, as the embedding layer computes them but with no padding mask attached (one
        token has nothing to mask, and a cell handed a mask warns)."""
        return ops.cast(ops.take(self.embedding.embeddings, tokens, axis=0), self.embedding.compute_dtype)

    def matmul_flops(self, feature_shape: tuple[int, ...]) -> tuple[int, int]:
        """Forward matmul FLOPs (2 per multiply-add) of the teacher-forced model, from its layers' kernels: (per real
        token, per caption). For benchmarks: the fraction of a dense matmul's FLOP/s a train step reaches."""
        raise NotImplementedError

    @staticmethod
    def kernel_flops(*kernels) -> int:
        return 2 * sum(int(np.prod(kernel.shape)) for kernel in kernels)

    def recurrent(self) -> layers.Layer:
        rnn_layer = RNNS[self.spec.rnn][0]
        return rnn_layer(self.spec.units, return_sequences=True, return_state=True, name="rnn")

    def initial_states(self) -> list[layers.Layer]:
        units, states = self.spec.units, self.spec.num_states
        return [layers.Dense(units, activation="tanh", name=f"init_state_{i}") for i in range(states)]

    def build(self, feature_shape: tuple[int, ...], embeddings: np.ndarray | None = None) -> keras.Model:
        """The teacher-forced model over features of ``feature_shape`` ((C,) pooled, (H·W, C) the grid), its
        embedding set to ``embeddings`` if given. ``hidden`` is an output too, so training can project only the
        real (non-padding) positions onto the vocabulary."""
        features = keras.Input(feature_shape, name="features")
        tokens = keras.Input((None,), dtype="int32", name="tokens")
        outputs = self.forward(features, self.embedding_dropout(self.embedding(tokens)))
        outputs["logits"] = self.head(outputs["hidden"])
        self.model = keras.Model([features, tokens], outputs, name=DECODER)
        if embeddings is not None:
            self.embedding.set_weights([embeddings])
        return self.model

    def build_grouped(self, feature_shape: tuple[int, ...], captions_per_image: int) -> keras.Model:
        """The teacher-forced model on image-grouped batches (``captioner.training.batching.ImageCaptionBatches``):
        features once per image (B, …), tokens ``captions_per_image`` rows per image (B·captions_per_image, T).
        What the decoder computes of an image alone runs once per image and is repeated for its captions
        (``grouped_forward``); the layers are ``build``'s (call it first), so training it trains ``model``."""
        features = keras.Input(feature_shape, name="features")
        tokens = keras.Input((None,), dtype="int32", name="tokens")
        words = self.embedding_dropout(self.embedding(tokens))
        outputs = self.grouped_forward(features, words, PerCaption(captions_per_image, name="per_caption"))
        outputs["logits"] = self.head(outputs["hidden"])
        return keras.Model([features, tokens], outputs, name=f"{DECODER}_grouped")

    def grouped_forward(self, features, words, per_caption: PerCaption) -> dict:
        """``forward`` with features once per image, repeated for each caption by ``per_caption``: by default the
        features themselves; a decoder that reads the grid (``reads_grid``) repeats its image projections instead (the
        same outputs, computed once per image): only there does grouping save work."""
        return self.forward(per_caption(features), words)


class Inject(Architecture):
    """Init-inject: the projected image is the RNN's initial state."""

    def create_layers(self) -> None:
        self.feature_dropout = layers.Dropout(self.spec.dropout, name="feature_dropout")
        self.init_states = self.initial_states()
        self.rnn = self.recurrent()
        self.output_dropout = layers.Dropout(self.spec.dropout, name="output_dropout")

    def forward(self, features, words) -> dict:
        image = self.feature_dropout(features)
        sequence = self.rnn(words, initial_state=[layer(image) for layer in self.init_states])[0]
        return {"hidden": self.output_dropout(sequence)}

    def start(self, features, length=None) -> list:
        return [layer(features) for layer in self.init_states]

    def matmul_flops(self, feature_shape: tuple[int, ...]) -> tuple[int, int]:
        cell = self.rnn.cell
        per_token = self.kernel_flops(cell.kernel, cell.recurrent_kernel, self.head.kernel)
        return per_token, self.kernel_flops(*(layer.kernel for layer in self.init_states))

    def step(self, tokens, states: list) -> tuple:
        output, new_states = self.rnn.cell(self.step_words(tokens), list(states))
        return self.head(output), list(new_states), None


class Merge(Architecture):
    """Merge: the RNN reads only words; the projected image is added to its outputs."""

    def create_layers(self) -> None:
        self.rnn = self.recurrent()
        self.image_projection = layers.Dense(self.spec.units, activation="relu", name="image_projection")
        self.feature_dropout = layers.Dropout(self.spec.dropout, name="feature_dropout")
        self.merge = layers.Add(name="merge")
        self.merge_hidden = layers.Dense(self.spec.units, activation="relu", name="merge_hidden")
        self.output_dropout = layers.Dropout(self.spec.dropout, name="output_dropout")

    def forward(self, features, words) -> dict:
        sequence = self.rnn(words)[0]
        image = self.image_projection(self.feature_dropout(features))
        merged = self.merge([sequence, ops.expand_dims(image, 1)])
        return {"hidden": self.output_dropout(self.merge_hidden(merged))}

    def matmul_flops(self, feature_shape: tuple[int, ...]) -> tuple[int, int]:
        cell = self.rnn.cell
        per_token = self.kernel_flops(cell.kernel, cell.recurrent_kernel, self.merge_hidden.kernel, self.head.kernel)
        return per_token, self.kernel_flops(self.image_projection.kernel)

    def start(self, features, length=None) -> list:
        zeros = ops.zeros((ops.shape(features)[0], self.spec.units))
        return [zeros] * self.spec.num_states + [self.image_projection(features)]

    def step(self, tokens, states: list) -> tuple:
        *rnn_states, image = states
        output, new_states = self.rnn.cell(self.step_words(tokens), rnn_states)
        return self.head(self.merge_hidden(output + image)), [*new_states, image], None


class Attention(Architecture):
    """Soft attention (Show, Attend and Tell): at every step a gated, Bahdanau-scored context vector over the
    H×W feature grid joins the word input; the initial state comes from the mean feature."""

    def create_layers(self) -> None:
        spec = self.spec
        # Without dropout on the grid the attention decoder overfits Flickr8k within a few epochs.
        self.feature_dropout = layers.Dropout(spec.dropout, name="feature_dropout")
        self.init_states = self.initial_states()
        # Attending over a projection rather than the raw channels keeps the per-step work small.
        self.memory_projection = layers.Dense(spec.units, name="memory_projection")
        self.attend = AttentionRNN(
            spec.rnn, spec.units, spec.attention_units, spec.embedding_dim, spec.units, name="attention_rnn"
        )
        # Show-Attend-Tell's deep output: tanh(L_h h + L_z z + E y) before the vocabulary projection.
        self.deep_hidden = layers.Dense(spec.embedding_dim, name="deep_hidden")
        self.deep_context = layers.Dense(spec.embedding_dim, name="deep_context")
        self.output_dropout = layers.Dropout(spec.dropout, name="output_dropout")

    def deep_output(self, output, context, words):
        return ops.tanh(self.deep_hidden(output) + self.deep_context(context) + words)

    def forward(self, features, words) -> dict:
        grid = self.feature_dropout(features)
        states = [layer(ops.mean(grid, axis=1)) for layer in self.init_states]
        sequence, contexts, attention = self.attend(words, self.memory_projection(grid), states)
        return {"attention": attention, "hidden": self.output_dropout(self.deep_output(sequence, contexts, words))}

    def grouped_forward(self, features, words, per_caption: PerCaption) -> dict:
        grid = self.feature_dropout(features)  # one mask per image: its captions see the same cells
        states = [per_caption(layer(ops.mean(grid, axis=1))) for layer in self.init_states]
        memory = self.memory_projection(grid)
        memory, keys = per_caption(memory), per_caption(self.attend.keys(memory))
        sequence, contexts, attention = self.attend(words, memory, states, keys=keys)
        return {"attention": attention, "hidden": self.output_dropout(self.deep_output(sequence, contexts, words))}

    def matmul_flops(self, feature_shape: tuple[int, ...]) -> tuple[int, int]:
        cells, attend = feature_shape[0], self.attend
        per_token = self.kernel_flops(
            attend.cell.kernel,
            attend.cell.recurrent_kernel,
            attend.hidden_query.kernel,
            attend.gate.kernel,
            self.deep_hidden.kernel,
            self.deep_context.kernel,
            self.head.kernel,
        ) + cells * (self.kernel_flops(attend.score.kernel) + 2 * self.spec.units)  # scores, the weighted sum
        per_caption = cells * self.kernel_flops(self.memory_projection.kernel, attend.memory_keys.kernel)
        return per_token, per_caption + self.kernel_flops(*(layer.kernel for layer in self.init_states))

    def start(self, features, length=None) -> list:
        memory = self.memory_projection(features)
        return [layer(ops.mean(features, axis=1)) for layer in self.init_states] + [memory, self.attend.keys(memory)]

    def step(self, tokens, states: list) -> tuple:
        words = self.step_words(tokens)
        *rnn_states, memory, keys = states
        output, context, alpha, new_states = self.attend.step(words, rnn_states, memory, keys)
        return self.head(self.deep_output(output, context, words)), [*new_states, memory, keys], alpha


class Transformer(Architecture):
    """A Transformer decoder (``captioner.model.transformer``): the words, projected to the model width and given their
    positions, pass through pre-layer-norm blocks of causal self-attention, cross-attention over the projected
    image cells (the H×W grid, or the pooled vector as one cell) and a feed-forward net. Its output projection is
    the embedding's transpose when ``tie_embeddings``. Decoding steps one position at a time over a cache of each
    block's keys and values (its states: the position, then per block the cached keys and values and the image's
    keys and values)."""

    def token_embedding(self) -> layers.Layer:
        # No padding mask: the causal mask keeps padding (after <end>) out of every real position's view.
        spec = self.spec
        return layers.ReversibleEmbedding(
            self.vocab_size,
            spec.embedding_dim,
            tie_weights=spec.tie_embeddings,
            reverse_dtype="float32",
            trainable=spec.train_embeddings,
            name="embedding",
        )

    def create_layers(self) -> None:
        spec, units = self.spec, self.spec.units
        resized = spec.embedding_dim != units  # GloVe's 50 dimensions, say, into a wider model
        self.feature_dropout = layers.Dropout(spec.dropout, name="feature_dropout")
        self.image_projection = layers.Dense(units, name="image_projection")
        self.word_projection = layers.Dense(units, name="word_projection") if resized else None
        self.positions = Positions(spec.context, units, spec.positions, name="positions")
        self.blocks = [
            DecoderBlock(units, spec.heads, spec.ff_units, spec.dropout, name=f"block_{index}")
            for index in range(spec.layers)
        ]
        self.final_norm = layers.LayerNormalization(epsilon=1e-5, name="final_norm")
        self.output_projection = layers.Dense(spec.embedding_dim, name="output_projection") if resized else None

    def vocabulary_head(self):
        def logits(hidden):  # the embedding reversed: its transpose when tied, else a matrix of its own
            return self.embedding(hidden, reverse=True)

        return logits

    def image_cells(self, features):
        """The image as cells of the model width: [B, cells, units] (pooled features: one cell)."""
        grid = features if len(features.shape) == 3 else ops.expand_dims(features, 1)
        return self.image_projection(self.feature_dropout(grid))

    def word_input(self, words):
        return words if self.word_projection is None else self.word_projection(words)

    def hidden(self, words):
        normed = self.final_norm(words)
        return normed if self.output_projection is None else self.output_projection(normed)

    def forward(self, features, words) -> dict:
        image = self.image_cells(features)
        words = self.positions(self.word_input(words))
        for block in self.blocks:
            words = block(words, image)
        return {"hidden": self.hidden(words)}

    def grouped_forward(self, features, words, per_caption: PerCaption) -> dict:
        image = self.image_cells(features)  # one dropout mask per image: its captions see the same cells
        words = self.positions(self.word_input(words))
        for block in self.blocks:
            words = block(words, image, captions_per_image=per_caption.captions_per_image)
        return {"hidden": self.hidden(words)}

    def start(self, features, length=None) -> list:
        image = self.image_cells(features)
        # The cache holds the positions decoded, not the whole context: a step's cost grows with its size.
        positions = self.spec.context if length is None else ops.minimum(length, self.spec.context)
        empty = ops.zeros((ops.shape(image)[0], positions, self.spec.units), dtype=image.dtype)
        states = [ops.zeros((ops.shape(image)[0],), dtype="int32")]
        for block in self.blocks:
            states += [empty, empty, *block.image_memory(image)]
        return states

    def step(self, tokens, states: list) -> tuple:
        position, *caches = states
        words = self.positions.at(self.word_input(self.step_words(tokens))[:, None], position)
        new_states = [position + 1]
        for index, block in enumerate(self.blocks):
            keys, values, *image_memory = caches[4 * index : 4 * index + 4]
            words, cache, weights = block.step(words, position, [keys, values], image_memory)
            new_states += [*cache, *image_memory]
        # The last block's cross-attention, averaged over its heads: the grid cells each word looked at (one cell:
        # no weights).
        attention = None if weights is None else ops.mean(weights[:, :, 0, :], axis=1)
        return self.head(self.hidden(words)[:, 0]), new_states, attention

    def matmul_flops(self, feature_shape: tuple[int, ...]) -> tuple[int, int]:
        # Self-attention over the prefix (≈ 4 · position · units a token per block) is left out: under 1% of
        # the kernels' share at captions' lengths.
        cells, spec = (feature_shape[0] if len(feature_shape) == 2 else 1), self.spec
        per_block = [(b.self_qkv, b.self_out, b.cross_query, b.cross_out, b.ff_hidden, b.ff_out) for b in self.blocks]
        layers_used = [*(layer for block in per_block for layer in block), self.word_projection, self.output_projection]
        reversed_embedding = self.embedding.embeddings if spec.tie_embeddings else self.embedding.reverse_embeddings
        per_token = self.kernel_flops(*(layer.kernel for layer in layers_used if layer is not None), reversed_embedding)
        if cells > 1:  # cross-attention's scores and weighted sum (one cell: neither)
            per_token += spec.layers * 2 * 2 * cells * spec.units
        image = self.image_projection.kernel, *(block.cross_kv.kernel for block in self.blocks)
        return per_token, cells * self.kernel_flops(*image)


ARCHITECTURES: dict[str, type[Architecture]] = {
    "merge": Merge,
    "inject": Inject,
    "attention": Attention,
    "transformer": Transformer,
}
assert tuple(ARCHITECTURES) == ARCHS and tuple(RNNS) == tuple(RNN_STATES), (
    "captioner.training.config names these choices"
)


def architecture(spec: DecoderSpec, vocab_size: int) -> Architecture:
    """The layers of the decoder ``spec`` describes, for a vocabulary of ``vocab_size``, newly initialised."""
    return ARCHITECTURES[spec.arch](spec, vocab_size)


def disagreement(model: keras.Model, reference: keras.Model) -> str | None:
    """How a loaded decoder differs from ``reference`` (the first layer whose weights differ in shape), or None when
    their weights have the same layout."""

    def layers_of(decoder: keras.Model) -> list[tuple[str, list[tuple[int, ...]]]]:
        return [(layer.name, [tuple(weight.shape) for weight in layer.weights]) for layer in decoder.layers]

    for (name, shapes), (expected_name, expected) in zip(layers_of(model), layers_of(reference), strict=False):
        if (name, shapes) != (expected_name, expected):
            return f"its layer {name} holds weights of shapes {shapes}, the spec's {expected_name} {expected}"
    if len(model.layers) != len(reference.layers):
        return f"{len(model.layers)} layers, the spec's {len(reference.layers)}"
    return None


DECODER, ENCODER = "decoder", "encoder"  # the names of the parts inside a captioner model


def parts(model: keras.Model) -> tuple[keras.Model | None, keras.Model]:
    """(fine-tuned encoder or None, decoder) of a captioner model: a ``build`` model, or one joined to its encoder."""
    if ENCODER not in {layer.name for layer in model.layers}:
        return None, model
    return model.get_layer(ENCODER), model.get_layer(DECODER)


class Steppable(Protocol):
    """What greedy decoding, sampling and beam search drive one token at a time: a ``Stepper``, or a
    ``captioner.model.ensemble.EnsembleStepper`` of several models."""

    reads_grid: bool  # whether ``start`` takes the feature grid rather than the pooled vector
    attends: bool  # whether ``step`` returns attention weights (else None)
    features: object  # the ``tf.TensorSpec`` of what ``start`` takes, any batch size
    context: int | None  # the most tokens it can decode (a transformer's positions); None: no limit

    def start(self, features, length) -> list:
        """The states before the first token, for captions of at most ``length`` tokens."""

    def step(self, tokens, states: list) -> tuple:
        """(next-token logits, new states, attention weights or None)."""


class Stepper:
    """An architecture's ``start`` and ``step``, compiled: ``start(features, length) → states``, ``step(tokens,
    states) → (logits, new states, attention weights or None)``; ``start`` takes the grid when ``reads_grid``, else
    the pooled vector."""

    def __init__(self, architecture: Architecture):
        import tensorflow as tf

        self.reads_grid = architecture.reads_grid
        self.context = architecture.spec.context if architecture.spec.arch == "transformer" else None
        # Signatures with any batch size: one trace each, whatever the batch sizes (a trace per batch shape made
        # the Steppers of a 3-member ensemble trip TensorFlow's retracing warning).
        features = architecture.model.inputs[0]
        self.features = tf.TensorSpec(features.shape, features.dtype)
        self.start = tf.function(architecture.start, input_signature=[self.features, tf.TensorSpec((), tf.int32)])
        states = self.start.get_concrete_function().structured_outputs
        state_specs = [tf.TensorSpec(state.shape, state.dtype) for state in states]
        self.step = tf.function(architecture.step, input_signature=[tf.TensorSpec((None,), tf.int32), state_specs])
        self.attends = self.step.get_concrete_function().structured_outputs[2] is not None
