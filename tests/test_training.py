"""Teacher-forced training with a masked loss (captioner.training, captioner.decoder)."""

import numpy as np
import pytest
import tensorflow as tf

from captioner import decoder, training
from captioner.text import Vocabulary, wrap


class NullLive:
    def __init__(self):
        self.logged = []

    def log_metric(self, name, value):
        self.logged.append((name, value))

    def next_step(self):
        pass


def toy_problem(num_images=16, feature_dim=8, seed=0):
    """Each image's caption names the index of its largest feature: learnable from the features alone."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(num_images, feature_dim)).astype(np.float32)
    words = [f"w{i}" for i in range(feature_dim)]
    captions = [(f"{i}.jpg", wrap(["the", words[int(np.argmax(features[i]))], "thing"])) for i in range(num_images)]
    vocab = Vocabulary.build([tokens for _, tokens in captions], min_count=1, max_length=10)
    return features, captions, vocab


def test_batches_pad_each_batch_to_its_own_longest_caption():
    features = np.arange(8, dtype=np.float32).reshape(4, 2)
    sequences = [[1, 5, 2], [1, 5, 6, 7, 2], [1, 2], [1, 5, 2]]
    widths = [tokens.shape[1] for _, tokens in training.batches(features, np.arange(4), sequences, batch_size=2)]
    assert widths == [5, 3]
    first_features, first_tokens = next(iter(training.batches(features, np.array([3, 0]), sequences[:2], 2)))
    np.testing.assert_array_equal(first_features, features[[3, 0]])
    np.testing.assert_array_equal(first_tokens[0], [1, 5, 2, 0, 0])


def test_masked_sums_ignore_padding():
    targets = tf.constant([[3, 2, 0, 0]])
    logits = tf.one_hot([[3, 2, 1, 1]], depth=5) * 10.0
    loss, correct, count = training.masked_sums(targets, logits)
    assert float(count) == 2.0 and float(correct) == 2.0 and float(loss) < 1e-3


def test_encode_captions_drops_too_long_and_featureless_captions():
    vocab = Vocabulary(["a", "b"], max_length=4)
    captions = [("x.jpg", wrap(["a", "b"])), ("x.jpg", wrap(["a", "b", "a"])), ("gone.jpg", wrap(["a"]))]
    rows, sequences, dropped = training.encode_captions(captions, {"x.jpg": 7}, vocab)
    assert rows.tolist() == [7] and sequences == [[1, 4, 5, 2]] and dropped == 2


@pytest.mark.parametrize("rnn", sorted(decoder.RNNS))
def test_training_learns_and_the_saved_model_reloads_identically(rnn, tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    features, captions, vocab = toy_problem()
    rows, sequences, _ = training.encode_captions(captions, {f"{i}.jpg": i for i in range(16)}, vocab)
    data = training.batches(features, rows, sequences, batch_size=8, seed=0)
    model = decoder.build(len(vocab), features.shape[1], rnn=rnn, units=32, embedding_dim=16, dropout=0.0)
    trainer = training.Trainer(model, learning_rate=0.01, clipnorm=5.0)
    before = trainer.run_epoch(data, training=False, description="dev")
    live = NullLive()
    summary = trainer.fit(data, data, epochs=40, patience=40, live=live)
    after = trainer.run_epoch(data, training=False, description="dev")
    assert after.loss < before.loss / 4 and after.accuracy > 0.9
    assert summary["best_dev_loss"] == pytest.approx(after.loss, rel=1e-5)
    assert {name for name, _ in live.logged} >= {"train/loss", "dev/loss", "dev/token_accuracy", "dev/perplexity"}

    model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    tokens = np.array(sequences[:4], dtype=np.int32)
    np.testing.assert_array_equal(model([features[rows[:4]], tokens]), reloaded([features[rows[:4]], tokens]))


def test_early_stopping_restores_the_best_weights():
    features, captions, vocab = toy_problem()
    rows, sequences, _ = training.encode_captions(captions, {f"{i}.jpg": i for i in range(16)}, vocab)
    train = training.batches(features, rows, sequences, batch_size=8, seed=0)
    # A dev set with shuffled pairings: the train fit makes its loss worse, so the first epoch is best.
    dev = training.batches(features, rows[::-1].copy(), sequences, batch_size=8)
    model = decoder.build(len(vocab), features.shape[1], rnn="gru", units=32, embedding_dim=16, dropout=0.0)
    trainer = training.Trainer(model, learning_rate=0.05, clipnorm=5.0)
    summary = trainer.fit(train, dev, epochs=30, patience=2, live=NullLive())
    assert summary["epochs_run"] == summary["best_epoch"] + 2 < 30
    assert trainer.run_epoch(dev, False, "dev").loss == pytest.approx(summary["best_dev_loss"], rel=1e-5)
