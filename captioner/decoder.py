"""The caption decoder: an RNN whose initial state is injected from the image features.

``build`` gives the teacher-forced training model (features, caption tokens → next-token logits
at every position); ``Stepper`` reuses its layers one token at a time for decoding.
"""

from __future__ import annotations

import keras
from keras import layers

RNNS = {"gru": (layers.GRU, 1), "lstm": (layers.LSTM, 2)}  # layer class, number of state tensors


def build(vocab_size: int, feature_dim: int, rnn: str, units: int, embedding_dim: int, dropout: float) -> keras.Model:
    rnn_class, num_states = RNNS[rnn]
    features = keras.Input((feature_dim,), name="features")
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    image = layers.Dropout(dropout, name="feature_dropout")(features)
    states = [layers.Dense(units, activation="tanh", name=f"init_state_{i}")(image) for i in range(num_states)]
    words = layers.Embedding(vocab_size, embedding_dim, mask_zero=True, name="embedding")(tokens)
    words = layers.Dropout(dropout, name="embedding_dropout")(words)
    sequence = rnn_class(units, return_sequences=True, return_state=True, name="rnn")(words, initial_state=states)[0]
    sequence = layers.Dropout(dropout, name="output_dropout")(sequence)
    logits = layers.Dense(vocab_size, name="logits")(sequence)
    return keras.Model([features, tokens], logits, name=f"{rnn}_inject_captioner")


class Stepper:
    """One-token-at-a-time views of a trained model: ``start(features) → states``, ``step(tokens, states)``."""

    def __init__(self, model: keras.Model):
        import tensorflow as tf

        self.num_states = sum(1 for layer in model.layers if layer.name.startswith("init_state_"))
        init_layers = [model.get_layer(f"init_state_{i}") for i in range(self.num_states)]
        embedding, rnn, head = (model.get_layer(name) for name in ("embedding", "rnn", "logits"))

        @tf.function(reduce_retracing=True)
        def start(features):
            return [layer(features) for layer in init_layers]

        @tf.function(reduce_retracing=True)
        def step(tokens, states):
            outputs = rnn(embedding(tokens[:, None]), initial_state=list(states))
            return head(outputs[0][:, 0]), list(outputs[1:])

        self.start, self.step = start, step
