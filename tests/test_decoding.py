"""Greedy decoding (captioner.decoding)."""

import keras
import numpy as np

from captioner import decoder, decoding, training
from captioner.decoder import Stepper
from tests.test_training import NullLive, toy_problem


def test_greedy_matches_teacher_forced_argmax_and_stops_at_end():
    keras.utils.set_random_seed(1)
    features, captions, vocab = toy_problem()
    rows, sequences, _ = training.encode_captions(captions, {f"{i}.jpg": i for i in range(16)}, vocab)
    data = training.batches(features, rows, sequences, batch_size=8, seed=0)
    model = decoder.build(len(vocab), features.shape[1], rnn="lstm", units=32, embedding_dim=16, dropout=0.0)
    training.Trainer(model, learning_rate=0.01, clipnorm=5.0).fit(data, data, epochs=60, patience=60, live=NullLive())

    generated = decoding.greedy(Stepper(model), features, vocab.start_id, vocab.end_id, max_len=8, batch_size=5)
    assert generated.shape == (16, 8)
    decoded = [vocab.decode(ids) for ids in generated]
    correct = sum(words == tokens[1:-1] for words, (_, tokens) in zip(decoded, captions, strict=True))
    assert correct >= 14
    for ids in generated:  # once <end> is produced, the row stays <end>
        ends = np.flatnonzero(ids == vocab.end_id)
        assert len(ends) and (ids[ends[0] :] == vocab.end_id).all()

    # Step-by-step decoding must agree with the training graph fed its own greedy output.
    prefix = np.concatenate([np.full((16, 1), vocab.start_id), generated[:, :3]], axis=1).astype(np.int32)
    teacher = np.argmax(model([features, prefix], training=False), axis=-1)
    np.testing.assert_array_equal(teacher[:, :4], generated[:, :4])


def test_a_model_that_never_ends_yields_max_len_tokens():
    model = decoder.build(6, 4, rnn="gru", units=8, embedding_dim=4, dropout=0.0)
    head = model.get_layer("logits")
    kernel, bias = head.get_weights()
    head.set_weights([np.zeros_like(kernel), np.eye(6)[5] * 10.0])  # always the word with id 5
    generated = decoding.greedy(Stepper(model), np.ones((3, 4), np.float32), start_id=1, end_id=2, max_len=7)
    assert generated.shape == (3, 7) and (generated == 5).all()
