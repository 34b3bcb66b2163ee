"""Caption decoders: a GRU or LSTM conditioned on the image by merge, init-inject or soft attention.

``build`` gives the teacher-forced training model: (image features, caption tokens) → next-token
logits at every position, the ``hidden`` vectors they are projected from (and, for attention, the
attention weights). ``Stepper`` runs the same layers one token at a time for decoding.

- merge: the RNN reads only words; the projected image is added to its outputs.
- init-inject (``inject``): the projected image is the RNN's initial state.
- attention (Show, Attend and Tell): at every step a gated, Bahdanau-scored context vector over
  the H×W feature grid joins the word input; the initial state comes from the mean feature.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol

import keras
import numpy as np
from keras import layers, ops

from captioner import CaptionerError, artifacts
from captioner import params as param_rules

ARCHS = ("merge", "inject", "attention")
RNNS = {"gru": (layers.GRU, layers.GRUCell, 1), "lstm": (layers.LSTM, layers.LSTMCell, 2)}  # layer, cell, states


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

    def call(self, words, memory, states, mask=None):
        """Outputs, contexts and attention weights at every step. ``mask`` is accepted and not needed:
        padding sits after <end>, so its steps change nothing the masked loss reads."""
        import tensorflow as tf

        keys = self.keys(memory)

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

    def compute_output_shape(self, words_shape, memory_shape, states_shape):
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


@dataclass(frozen=True)
class DecoderSpec:
    """A decoder's architecture as data: built from the ``decoder`` params, saved in the model card, read back
    on load. Training-only settings (initial embeddings, the attention penalty's weight) are not part of it."""

    rnn: str  # gru | lstm
    arch: str  # merge | inject | attention
    units: int
    embedding_dim: int
    dropout: float
    attention_units: int = 256
    train_embeddings: bool = True

    @property
    def reads_grid(self) -> bool:
        """Whether the decoder reads the H×W feature grid (attention) rather than the pooled vector."""
        return self.arch == "attention"

    @property
    def num_states(self) -> int:
        return RNNS[self.rnn][2]

    @classmethod
    def from_params(cls, params: dict) -> DecoderSpec:
        return cls(**{field.name: params[field.name] for field in fields(cls)})

    @classmethod
    def from_card(cls, card: dict, source: str) -> DecoderSpec:
        """The spec a model card holds under ``decoder``; a CaptionerError naming what is missing."""
        saved = card.get("decoder")
        if not isinstance(saved, dict):
            raise CaptionerError(f"{source} has no decoder spec (saved by an earlier version); retrain: dvc repro")
        missing = [field.name for field in fields(cls) if field.name not in saved]
        if missing:
            raise CaptionerError(f"{source}: the decoder spec lacks {', '.join(missing)}; retrain: dvc repro")
        try:  # the spec's fields are decoder params: the same rules hold
            for field in fields(cls):
                param_rules.check(f"decoder.{field.name}", saved[field.name])
        except CaptionerError as err:
            raise artifacts.damaged(source, f"its decoder spec: {err}") from None
        return cls(**{field.name: saved[field.name] for field in fields(cls)})


def build(
    vocab_size: int, feature_shape: tuple[int, ...], spec: DecoderSpec, embeddings: np.ndarray | None = None
) -> keras.Model:
    """The training model. ``feature_shape`` is (C,) for merge/inject and (H·W, C) for attention."""
    rnn, arch, units, embedding_dim, dropout = spec.rnn, spec.arch, spec.units, spec.embedding_dim, spec.dropout
    rnn_layer, num_states = RNNS[rnn][0], spec.num_states
    features = keras.Input(feature_shape, name="features")
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    embedding = layers.Embedding(
        vocab_size, embedding_dim, mask_zero=True, trainable=spec.train_embeddings, name="embedding"
    )
    words = layers.Dropout(dropout, name="embedding_dropout")(embedding(tokens))
    outputs = {}
    if arch == "inject":
        image = layers.Dropout(dropout, name="feature_dropout")(features)
        states = [layers.Dense(units, activation="tanh", name=f"init_state_{i}")(image) for i in range(num_states)]
        sequence = rnn_layer(units, return_sequences=True, return_state=True, name="rnn")(words, initial_state=states)[
            0
        ]
        hidden = layers.Dropout(dropout, name="output_dropout")(sequence)
    elif arch == "merge":
        sequence = rnn_layer(units, return_sequences=True, return_state=True, name="rnn")(words)[0]
        image = layers.Dense(units, activation="relu", name="image_projection")(
            layers.Dropout(dropout, name="feature_dropout")(features)
        )
        merged = layers.Add(name="merge")([sequence, ops.expand_dims(image, 1)])
        hidden = layers.Dense(units, activation="relu", name="merge_hidden")(merged)
        hidden = layers.Dropout(dropout, name="output_dropout")(hidden)
    else:
        # Without dropout on the grid the attention decoder overfits Flickr8k within a few epochs.
        grid = layers.Dropout(dropout, name="feature_dropout")(features)
        mean = ops.mean(grid, axis=1)
        states = [layers.Dense(units, activation="tanh", name=f"init_state_{i}")(mean) for i in range(num_states)]
        # Attending over a projection rather than the raw channels keeps the per-step work small.
        memory = layers.Dense(units, name="memory_projection")(grid)
        attend = AttentionRNN(rnn, units, spec.attention_units, embedding_dim, units, name="attention_rnn")
        sequence, contexts, outputs["attention"] = attend(words, memory, states)
        # Show-Attend-Tell's deep output: tanh(L_h h + L_z z + E y) before the vocabulary projection.
        deep_hidden = layers.Dense(embedding_dim, name="deep_hidden")(sequence)
        deep_context = layers.Dense(embedding_dim, name="deep_context")(contexts)
        hidden = layers.Dropout(dropout, name="output_dropout")(ops.tanh(deep_hidden + deep_context + words))
    # ``hidden`` too, so training can project only the real (non-padding) positions onto the vocabulary.
    # float32 even under a mixed precision policy: the softmax over the vocabulary needs its range.
    outputs["hidden"], outputs["logits"] = hidden, layers.Dense(vocab_size, name="logits", dtype="float32")(hidden)
    model = keras.Model([features, tokens], outputs, name=DECODER)
    if embeddings is not None:
        model.get_layer("embedding").set_weights([embeddings])
    return model


def disagreement(model: keras.Model, spec: DecoderSpec, vocab_size: int) -> str | None:
    """How a loaded decoder differs from the one ``spec`` and ``vocab_size`` build (the first layer whose weights
    differ in shape), or None when they agree."""
    reference = build(vocab_size, tuple(model.inputs[0].shape[1:]), spec)

    def layers_of(decoder: keras.Model) -> list[tuple[str, list[tuple[int, ...]]]]:
        return [(layer.name, [tuple(weight.shape) for weight in layer.weights]) for layer in decoder.layers]

    for (name, shapes), (expected_name, expected) in zip(layers_of(model), layers_of(reference), strict=False):
        if (name, shapes) != (expected_name, expected):
            return f"its layer {name} holds weights of shapes {shapes}, the spec's {expected_name} {expected}"
    if len(model.layers) != len(reference.layers):
        return f"{len(model.layers)} layers, the spec's {len(reference.layers)}"
    return None


DECODER, ENCODER = "decoder", "encoder"  # the names of the parts inside a captioner model


@keras.saving.register_keras_serializable(package="captioner")
class PerCaption(layers.Layer):
    """Each image's features once per caption row: (B, …) → (B·captions_per_image, …), image by image; what joins
    a fine-tuned encoder to the decoder (``captioner.finetuning.joint_model``).

    A broadcast and a reshape rather than ``ops.repeat``: with a free batch dimension the gradient of
    TensorFlow's repeat (or tile) logs a spurious oneDNN "DT_INT32" error line on every fine-tuning run.
    """

    def __init__(self, captions_per_image: int, **kwargs):
        super().__init__(**kwargs)
        self.captions_per_image = captions_per_image

    def call(self, features):
        shape = ops.shape(features)
        copies = ops.broadcast_to(ops.expand_dims(features, 1), (shape[0], self.captions_per_image, *shape[1:]))
        return ops.reshape(copies, (-1, *features.shape[1:]))

    def compute_output_shape(self, shape):
        return (None if shape[0] is None else shape[0] * self.captions_per_image, *shape[1:])

    def get_config(self):
        return super().get_config() | {"captions_per_image": self.captions_per_image}


def parts(model: keras.Model) -> tuple[keras.Model | None, keras.Model]:
    """(fine-tuned encoder or None, decoder) of a captioner model: a ``build`` model, or one joined to its encoder."""
    if ENCODER not in {layer.name for layer in model.layers}:
        return None, model
    return model.get_layer(ENCODER), model.get_layer(DECODER)


class StepwiseDecoder(Protocol):
    """What greedy decoding, sampling and beam search drive one token at a time: a ``Stepper``, or a
    ``captioner.ensemble.EnsembleStepper`` of several models."""

    reads_grid: bool  # whether ``start`` takes the feature grid rather than the pooled vector

    def start(self, features) -> list:
        """The states before the first token."""

    def step(self, tokens, states: list) -> tuple:
        """(next-token logits, new states, attention weights or None)."""


class Stepper:
    """One-token-at-a-time views of a trained model: ``start(features) → states``, ``step(tokens, states)``.

    ``step`` returns (logits, new states, attention weights or None); ``start`` takes the grid when
    ``reads_grid``, else the pooled vector.
    """

    def __init__(self, model: keras.Model, spec: DecoderSpec):
        import tensorflow as tf

        self.arch, num_states, self.reads_grid = spec.arch, spec.num_states, spec.reads_grid
        embedding, head = model.get_layer("embedding"), model.get_layer("logits")

        if self.arch == "attention":
            attend = model.get_layer("attention_rnn")
            init = [model.get_layer(f"init_state_{i}") for i in range(num_states)]
            deep = [model.get_layer(name) for name in ("deep_hidden", "deep_context")]

            project = model.get_layer("memory_projection")

            def start(features):
                memory = project(features)
                return [layer(ops.mean(features, axis=1)) for layer in init] + [memory, attend.keys(memory)]

            def step(tokens, states):
                words = embedding(tokens)
                *rnn_states, memory, keys = states
                output, context, alpha, new_states = attend.step(words, rnn_states, memory, keys)
                logits = head(ops.tanh(deep[0](output) + deep[1](context) + words))
                return logits, [*new_states, memory, keys], alpha

        else:
            rnn = model.get_layer("rnn")
            if self.arch == "inject":
                init = [model.get_layer(f"init_state_{i}") for i in range(num_states)]

                def start(features):
                    return [layer(features) for layer in init]
            else:
                project, merge_hidden = model.get_layer("image_projection"), model.get_layer("merge_hidden")

                def start(features):
                    zeros = ops.zeros((ops.shape(features)[0], rnn.units))
                    return [zeros] * num_states + [project(features)]

            def step(tokens, states):
                rnn_states = states if self.arch == "inject" else states[:-1]
                outputs = rnn(embedding(tokens[:, None]), initial_state=list(rnn_states))
                output, new_states = outputs[0][:, 0], list(outputs[1:])
                if self.arch == "merge":
                    output = merge_hidden(output + states[-1])
                    new_states = [*new_states, states[-1]]
                return head(output), new_states, None

        # Signatures with any batch size: one trace each, whatever the batch sizes (a trace per batch shape made
        # the Steppers of a 3-member ensemble trip TensorFlow's retracing warning).
        features = model.inputs[0]
        self.start = tf.function(start, input_signature=[tf.TensorSpec(features.shape, features.dtype)])
        states = self.start.get_concrete_function().structured_outputs
        state_specs = [tf.TensorSpec(state.shape, state.dtype) for state in states]
        self.step = tf.function(step, input_signature=[tf.TensorSpec((None,), tf.int32), state_specs])
