"""Teacher-forced training with a masked loss (captioner.training), for every decoder (captioner.decoder)."""

import json
import subprocess
import sys

import keras
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


def toy_problem(num_images=16, grid=4, channels=8, seed=0):
    """Each image's caption names the channel that peaks in its grid: learnable from the features alone."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(num_images, grid, channels)).astype(np.float32)
    words = [f"w{i}" for i in range(channels)]
    peak = [int(np.argmax(features[i].mean(axis=0))) for i in range(num_images)]
    captions = [(f"{i}.jpg", wrap(["the", words[peak[i]], "thing"])) for i in range(num_images)]
    vocab = Vocabulary.build([tokens for _, tokens in captions], min_count=1, max_length=10)
    return features, captions, vocab


def toy_batches(features, captions, vocab, arch, shuffle_seed=0, reverse_rows=False):
    rows, sequences, _ = training.encode_captions(captions, {f"{i}.jpg": i for i in range(len(features))}, vocab)
    if reverse_rows:
        rows = rows[::-1].copy()
    table = features if arch == "attention" else features.mean(axis=1)
    return training.CaptionBatches(table.__getitem__, table.shape[1:], rows, sequences, batch_size=8, seed=shuffle_seed)


def toy_model(vocab, features, arch, rnn="gru"):
    shape = features.shape[1:] if arch == "attention" else features.shape[2:]
    return decoder.build(len(vocab), shape, rnn, arch, units=32, embedding_dim=16, dropout=0.0, attention_units=16)


def test_batches_group_similar_lengths_pad_each_batch_to_its_own_longest_and_remix_repeatably():
    table = np.arange(8, dtype=np.float32).reshape(4, 2)
    sequences = [[1, 5, 2], [1, 5, 6, 7, 2], [1, 2], [1, 5, 2]]
    unshuffled = training.CaptionBatches(table.__getitem__, (2,), np.arange(4), sequences, batch_size=2)
    ordered = list(unshuffled)
    assert len(unshuffled) == len(ordered) == 2
    assert [tokens.shape[1] for _, tokens in ordered] == [3, 5]  # sorted by length: [2, 0] then [3, 1]
    np.testing.assert_array_equal(ordered[0][0], table[[2, 0]])
    np.testing.assert_array_equal(ordered[0][1][0], [1, 2, 0])
    np.testing.assert_array_equal(ordered[1][1][0], [1, 5, 2, 0, 0])

    def epochs(seed):
        dataset = training.CaptionBatches(table.__getitem__, (2,), np.arange(4), sequences, batch_size=2, seed=seed)
        return [[row for features, _ in dataset for row in features[:, 0].tolist()] for _ in range(4)]

    assert epochs(5) == epochs(5)
    assert len({tuple(order) for order in epochs(5)}) > 1  # a new mix each epoch
    assert all(sorted(order) == [0, 2, 4, 6] for order in epochs(5))  # every caption once per epoch


def test_length_buckets_cut_padding_and_cover_every_caption_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 30, size=5000)
    buckets = training.length_buckets(lengths, 64, np.random.default_rng(1))
    assert sorted(np.concatenate(buckets).tolist()) == list(range(5000))
    padded_steps = sum(len(batch) * lengths[batch].max() for batch in buckets)
    random_batches = np.array_split(rng.permutation(5000), len(buckets))
    assert padded_steps < 0.75 * sum(len(batch) * lengths[batch].max() for batch in random_batches)
    assert training.length_buckets(lengths, 64, np.random.default_rng(1))[0].tolist() == buckets[0].tolist()


def test_image_caption_batches_hold_all_captions_of_each_image_with_its_features():
    captions = [[[1, 4, 2], [1, 4, 5, 6, 2]], [[1, 5, 2]], [[1, 6, 6, 2]]]
    features = np.arange(3.0)[:, None] * np.ones((3, 2))
    rows = np.array([2, 0, 1])  # image i's features are at rows[i]
    batches = training.ImageCaptionBatches(features.__getitem__, (2,), rows, captions, per_image=2, batch_size=2)
    assert len(batches) == 2
    (first_features, first_tokens), (last_features, last_tokens) = list(batches)
    # Images of similar longest caption together (1 and 2, then 0); rows of all padding fill up to per_image.
    assert first_features[:, 0].tolist() == [0.0, 1.0] and last_features[:, 0].tolist() == [2.0]
    assert first_tokens.tolist() == [[1, 5, 2, 0], [0, 0, 0, 0], [1, 6, 6, 2], [0, 0, 0, 0]]
    assert last_tokens.tolist() == [[1, 4, 2, 0, 0], [1, 4, 5, 6, 2]]

    shuffled = training.ImageCaptionBatches(features.__getitem__, (2,), rows, captions, 2, batch_size=2, seed=0)
    seen = []
    for feature_batch, token_batch in shuffled:
        for value, group in zip(feature_batch[:, 0], token_batch.reshape(len(feature_batch), 2, -1), strict=True):
            image = rows.tolist().index(int(value))
            assert [[token for token in row if token] for row in group.tolist() if any(row)] == captions[image]
            seen.append(image)
    assert sorted(seen) == [0, 1, 2]


@pytest.mark.parametrize("arch", decoder.ARCHS)
def test_forced_sums_project_only_real_positions_and_equal_the_masked_full_loss(arch):
    features, captions, vocab = toy_problem()
    captions[0] = (captions[0][0], wrap(["the", "thing"]))  # a shorter caption: its batch has padding
    model = toy_model(vocab, features, arch)
    inputs, tokens = map(tf.constant, next(iter(toy_batches(features, captions, vocab, arch, shuffle_seed=None))))
    assert (tokens.numpy() == Vocabulary.pad_id).any()
    loss, correct, count = training.forced_sums(model, inputs, tokens)
    targets = tokens[:, 1:].numpy()
    logits = model([inputs, tokens[:, :-1]])["logits"].numpy()
    real = targets != Vocabulary.pad_id
    log_probabilities = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_probabilities, targets[..., None], -1)[..., 0]
    assert float(count) == real.sum()
    assert float(loss) == pytest.approx(-picked[real].sum(), rel=1e-5)
    assert float(correct) == (logits.argmax(-1) == targets)[real].sum()


def test_attention_penalty_is_zero_when_every_cell_gets_one_unit():
    targets = tf.constant([[5, 2, 0]])
    spread = tf.constant([[[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]])  # the padded step does not count
    assert float(training.attention_penalty(targets, spread)) == pytest.approx(0.0)
    focused = tf.constant([[[1.0, 0.0], [1.0, 0.0], [0.5, 0.5]]])
    assert float(training.attention_penalty(targets, focused)) == pytest.approx((1.0 + 1.0) / 2)


def test_encode_captions_drops_too_long_and_featureless_captions():
    vocab = Vocabulary(["a", "b"], max_length=4)
    captions = [("x.jpg", wrap(["a", "b"])), ("x.jpg", wrap(["a", "b", "a"])), ("gone.jpg", wrap(["a"]))]
    rows, sequences, dropped = training.encode_captions(captions, {"x.jpg": 7}, vocab)
    assert rows.tolist() == [7] and sequences == [[1, 4, 5, 2]] and dropped == 2


@pytest.mark.parametrize("rnn", sorted(decoder.RNNS))
@pytest.mark.parametrize("arch", decoder.ARCHS)
def test_every_decoder_learns_and_reloads_identically(arch, rnn, tmp_path):
    keras.utils.set_random_seed(0)
    features, captions, vocab = toy_problem()
    data = toy_batches(features, captions, vocab, arch)
    model = toy_model(vocab, features, arch, rnn)
    trainer = training.Trainer(model, learning_rate=0.01, clipnorm=5.0, attention_reg=1.0)
    before = trainer.run_epoch(data, training=False, description="dev")
    live = NullLive()
    summary = trainer.fit(data, data, epochs=25, patience=25, live=live)
    after = trainer.run_epoch(data, training=False, description="dev")
    assert after.loss < before.loss / 3
    assert summary["best_dev_loss"] == pytest.approx(after.loss, rel=1e-5)
    assert {name for name, _ in live.logged} >= {"train/loss", "dev/loss", "dev/token_accuracy", "dev/perplexity"}

    model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    assert decoder.architecture(reloaded) == (rnn, arch)
    inputs, tokens = next(iter(data))
    for key, value in model([inputs, tokens]).items():
        np.testing.assert_array_equal(value, reloaded([inputs, tokens])[key])


def test_early_stopping_restores_the_best_weights_and_the_learning_rate_drops_on_plateau():
    features, captions, vocab = toy_problem()
    train = toy_batches(features, captions, vocab, "inject")
    # A dev set with shuffled pairings: the train fit makes its loss worse, so the first epoch is best.
    dev = toy_batches(features, captions, vocab, "inject", shuffle_seed=None, reverse_rows=True)
    model = toy_model(vocab, features, "inject")
    trainer = training.Trainer(model, learning_rate=0.05, clipnorm=5.0)
    live = NullLive()
    summary = trainer.fit(train, dev, epochs=30, patience=4, live=live, lr_patience=2, lr_factor=0.5)
    assert summary["epochs_run"] == summary["best_epoch"] + 4 < 30
    assert trainer.run_epoch(dev, False, "dev").loss == pytest.approx(summary["best_dev_loss"], rel=1e-5)
    rates = [value for name, value in live.logged if name == "learning_rate"]
    assert rates[0] == pytest.approx(0.05) and rates[-1] == pytest.approx(0.025)


@pytest.mark.parametrize("broken", ["empty dev batches", "features with a NaN"])
def test_a_loss_that_is_not_finite_stops_training_instead_of_keeping_the_untrained_weights(broken):
    from captioner.stage import StageError

    features, captions, vocab = toy_problem()
    if broken == "features with a NaN":
        features[3, 0, 0] = np.nan
    train = toy_batches(features, captions, vocab, "inject")
    dev = toy_batches(features, captions[:0] if broken == "empty dev batches" else captions, vocab, "inject")
    model = toy_model(vocab, features, "inject")
    trainer = training.Trainer(model, learning_rate=0.01, clipnorm=5.0)
    expected = "dev" if broken == "empty dev batches" else "train"
    expected = rf"the {expected} loss is nan at epoch 1: training diverged or .*; no model saved"
    with pytest.raises(StageError, match=expected):
        trainer.fit(train, dev, epochs=5, patience=5, live=NullLive())


def test_dev_bleu4_picks_the_weights_kept_while_the_dev_loss_paces_training():
    features, captions, vocab = toy_problem()
    data = toy_batches(features, captions, vocab, "inject")
    model = toy_model(vocab, features, "inject")
    trainer = training.Trainer(model, learning_rate=0.01, clipnorm=5.0)
    scores, snapshots = iter([0.1, 0.3, 0.2, 0.25, 0.1, 0.2]), []

    def dev_bleu4():
        snapshots.append(model.get_weights())
        return next(scores)

    live = NullLive()
    summary = trainer.fit(data, data, epochs=6, patience=3, live=live, lr_patience=2, dev_bleu4=dev_bleu4)
    # BLEU-4 stalled for four epochs, past patience 3, but the dev loss kept falling: training went on
    # at the same rate, and the weights kept are those of the best score.
    assert (summary["best_epoch"], summary["epochs_run"], summary["best_dev_bleu4"]) == (2, 6, 0.3)
    for restored, best in zip(model.get_weights(), snapshots[1], strict=True):
        np.testing.assert_array_equal(restored, best)
    assert [value for name, value in live.logged if name == "dev/bleu4"] == [0.1, 0.3, 0.2, 0.25, 0.1, 0.2]
    rates = [value for name, value in live.logged if name == "learning_rate"]
    assert rates == [pytest.approx(0.01)] * 6


def test_mirrored_training_over_two_devices_matches_one_device():
    # Logical devices must be configured before TensorFlow starts, so this runs in a fresh process.
    result = subprocess.run(
        [sys.executable, __file__, "compare-strategies"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    assert report["default_loss"] == pytest.approx(report["mirrored_loss"], rel=1e-5)
    assert report["max_weight_difference"] < 1e-5
    assert report["weights_moved"] > 1e-3


def test_auto_strategy_is_the_default_one_without_gpus():
    assert training.strategy_named("auto") is tf.distribute.get_strategy()
    assert training.strategy_named("default").num_replicas_in_sync == 1


def _compare_strategies() -> dict:
    """Train the same model for two epochs on the same batches, on one device and mirrored over two CPUs."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    features, captions, vocab = toy_problem(num_images=13)  # batches of 8 and 5: an uneven split
    keras.utils.set_random_seed(0)
    initial = toy_model(vocab, features, "inject").get_weights()
    results = {}
    for name, strategy in (("default", tf.distribute.get_strategy()), ("mirrored", mirrored)):
        with strategy.scope():
            model = toy_model(vocab, features, "inject")
            model.set_weights(initial)
            trainer = training.Trainer(model, learning_rate=0.01, clipnorm=100.0, strategy=strategy)
        data = toy_batches(features, captions, vocab, "inject")
        stats = [trainer.run_epoch(data, training=True, description=name) for _ in range(2)]
        results[name] = (stats[-1].loss, model.get_weights())
    difference = max(np.abs(a - b).max() for a, b in zip(results["default"][1], results["mirrored"][1], strict=True))
    moved = max(np.abs(a - b).max() for a, b in zip(results["default"][1], initial, strict=True))
    return {
        "replicas": mirrored.num_replicas_in_sync,
        "default_loss": results["default"][0],
        "mirrored_loss": results["mirrored"][0],
        "max_weight_difference": float(difference),
        "weights_moved": float(moved),
    }


if __name__ == "__main__" and sys.argv[1:] == ["compare-strategies"]:
    print(json.dumps(_compare_strategies()))
