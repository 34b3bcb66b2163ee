"""Teacher-forced training with a masked loss (captioner.training), for every decoder (captioner.decoder)."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from captioner import CaptionerError, batching, captioning, decoder, decoding, training
from captioner.decoder import Stepper
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
    rows, sequences, _ = batching.encode_captions(captions, {f"{i}.jpg": i for i in range(len(features))}, vocab)
    if reverse_rows:
        rows = rows[::-1].copy()
    table = features if arch == "attention" else features.mean(axis=1)
    return batching.CaptionBatches(table.__getitem__, table.shape[1:], rows, sequences, batch_size=8, seed=shuffle_seed)


def toy_spec(arch, rnn="gru", dropout=0.0):
    return decoder.DecoderSpec(rnn, arch, units=32, embedding_dim=16, dropout=dropout, attention_units=16)


def toy_model(vocab, features, arch, rnn="gru"):
    shape = features.shape[1:] if arch == "attention" else features.shape[2:]
    return decoder.build(len(vocab), shape, toy_spec(arch, rnn))


@pytest.mark.parametrize("rnn", sorted(decoder.RNNS))
@pytest.mark.parametrize("arch", decoder.ARCHS)
def test_every_decoder_learns_and_reloads_identically(arch, rnn, tmp_path):
    keras.utils.set_random_seed(0)
    features, captions, vocab = toy_problem()
    data = toy_batches(features, captions, vocab, arch)
    model = toy_model(vocab, features, arch, rnn)
    trainer = training.Trainer(model, learning_rate=0.01, clipnorm=5.0, attention_reg=1.0)
    before = trainer.run_epoch(data, "dev", description="dev")
    live = NullLive()
    summary = trainer.fit(data, data, epochs=25, patience=25, live=live)
    after = trainer.run_epoch(data, "dev", description="dev")
    assert after.loss < before.loss / 3
    assert summary["best_dev_loss"] == pytest.approx(after.loss, rel=1e-5)
    logged = {name for name, _ in live.logged}
    assert logged >= {"train/loss", "dev/loss", "train/token_accuracy", "dev/token_accuracy", "by_epoch/learning_rate"}
    assert "dev/perplexity" not in logged  # exp(loss): the loss plot says it already

    model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    assert decoder.parts(reloaded) == (None, reloaded) and reloaded.name == decoder.DECODER
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
    assert trainer.run_epoch(dev, "dev", "dev").loss == pytest.approx(summary["best_dev_loss"], rel=1e-5)
    rates = [value for name, value in live.logged if name == "by_epoch/learning_rate"]
    assert rates[0] == pytest.approx(0.05) and rates[-1] == pytest.approx(0.025)


@pytest.mark.parametrize("broken", ["empty dev batches", "features with a NaN"])
def test_a_loss_that_is_not_finite_stops_training_instead_of_keeping_the_untrained_weights(broken):
    from captioner import CaptionerError

    features, captions, vocab = toy_problem()
    if broken == "features with a NaN":
        features[3, 0, 0] = np.nan
    train = toy_batches(features, captions, vocab, "inject")
    dev = toy_batches(features, captions[:0] if broken == "empty dev batches" else captions, vocab, "inject")
    model = toy_model(vocab, features, "inject")
    trainer = training.Trainer(model, learning_rate=0.01, clipnorm=5.0)
    expected = "dev" if broken == "empty dev batches" else "train"
    expected = rf"the {expected} loss is nan at epoch 1: training diverged or .*; no model saved"
    with pytest.raises(CaptionerError, match=expected):
        trainer.fit(train, dev, epochs=5, patience=5, live=NullLive())


@pytest.mark.parametrize(("metric", "best"), [("bleu4", 2), ("cider", 5)])
def test_a_dev_score_picks_the_weights_kept_while_the_dev_loss_paces_training(metric, best):
    features, captions, vocab = toy_problem()
    data = toy_batches(features, captions, vocab, "inject")
    model = toy_model(vocab, features, "inject")
    trainer = training.Trainer(model, learning_rate=0.01, clipnorm=5.0)
    series = {"bleu4": [0.1, 0.3, 0.2, 0.25, 0.1, 0.2], "cider": [0.5, 0.4, 0.6, 0.3, 0.9, 0.2]}
    scores, snapshots = iter(zip(*series.values(), strict=True)), []

    def dev_scores():
        snapshots.append(model.get_weights())
        return dict(zip(series, next(scores), strict=True))

    live = NullLive()
    summary = trainer.fit(data, data, epochs=6, patience=3, live=live, lr_patience=2, dev_scores=dev_scores,
                          metric=metric)  # fmt: skip
    # The score stalled for epochs past patience 3, but the dev loss kept falling: training went on
    # at the same rate, and the weights kept are those of the best ``metric``.
    assert (summary["best_epoch"], summary["epochs_run"]) == (best, 6)
    assert summary[f"best_dev_{metric}"] == max(series[metric]) and len(summary) == 4
    for restored, kept in zip(model.get_weights(), snapshots[best - 1], strict=True):
        np.testing.assert_array_equal(restored, kept)
    for name, values in series.items():  # both scores logged, whichever keeps the weights
        assert [value for logged, value in live.logged if logged == f"by_epoch/dev_{name}"] == values
    rates = [value for name, value in live.logged if name == "by_epoch/learning_rate"]
    assert rates == [pytest.approx(0.01)] * 6


@pytest.mark.parametrize(("precision", "arch"), [("mixed_bfloat16", "attention"), ("mixed_float16", "inject")])
def test_mixed_precision_trains_and_the_saved_model_reloads_and_decodes_in_float32(precision, arch, tmp_path):
    features, captions, vocab = toy_problem()
    data = toy_batches(features, captions, vocab, arch)
    keras.utils.set_random_seed(0)
    try:
        training.use_precision(precision)
        model = toy_model(vocab, features, arch)
        trainer = training.Trainer(model, learning_rate=0.01, clipnorm=5.0, attention_reg=1.0)
        before = trainer.run_epoch(data, "dev", description="dev")
        summary = trainer.fit(data, data, epochs=30, patience=30, live=NullLive())
    finally:
        training.use_precision("float32")
    assert model.get_layer("rnn" if arch == "inject" else "attention_rnn").compute_dtype == precision[6:]
    assert model.get_layer("logits").compute_dtype == "float32"  # the softmax's range
    assert all(weight.dtype == np.float32 for weight in model.get_weights())
    assert summary["best_dev_loss"] < before.loss / 4
    if precision == "mixed_float16":
        assert isinstance(trainer.optimizers[0], keras.optimizers.LossScaleOptimizer)

    attrs = {"encoder": "toy", "weights": "w", "weights_param": "imagenet", "input_size": 96}
    captioning.save(tmp_path, model, attrs, vocab, toy_spec(arch))
    reloaded = captioning.Trained.load(tmp_path).decoder
    assert {layer.dtype_policy.name for layer in reloaded.layers} == {"float32"}
    inputs, tokens = next(iter(data))
    logits = model([inputs, tokens])["logits"]
    np.testing.assert_allclose(reloaded([inputs, tokens])["logits"], logits, atol=0.15)
    table = features if arch == "attention" else features.mean(axis=1)
    greedy = decoding.greedy(
        Stepper(reloaded, toy_spec(arch)), table.__getitem__, np.arange(4), vocab.start_id, vocab.end_id, 6
    )
    words = [vocab.tokens[i] for i in greedy[:, 1]]
    assert words == [captions[i][1][2] for i in range(4)]  # the peak channel's word, as trained


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
        stats = [trainer.run_epoch(data, "train", description=name) for _ in range(2)]
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


def test_the_training_log_replaces_the_last_one_only_when_training_finishes(tmp_path):
    folder, timings = tmp_path / "metrics" / "train", tmp_path / "logs" / "epochs.tsv"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text('{"best_epoch": 7}\n')
    with pytest.raises(KeyboardInterrupt), training.EpochLog(folder, timings) as live:
        live.log_metric("train/loss", 1.5)
        live.log_metric("epoch_seconds", 3.0)
        live.next_step()  # DVCLive writes its own metrics.json here, which must not reach the folder
        raise KeyboardInterrupt
    assert sorted(path.name for path in folder.iterdir()) == ["metrics.json"]
    assert (folder / "metrics.json").read_text() == '{"best_epoch": 7}\n'
    assert not list(folder.parent.glob(".train*")), "scratch left behind"

    with training.EpochLog(folder, timings) as live:
        for epoch in (1, 2):
            live.log_metric("train/loss", 1.0 / epoch)
            live.log_metric("epoch_seconds", 3.0)
            live.next_step()
        live.summary = {"best_epoch": 2}
    assert json.loads((folder / "metrics.json").read_text()) == {"best_epoch": 2}
    assert (folder / "plots" / "metrics" / "train" / "loss.tsv").read_text().split("\n")[1:3] == ["1\t1.0", "2\t0.5"]
    assert not (folder / "plots" / "metrics" / "by_epoch").exists()  # nothing logged there: no file, no empty plot
    assert timings.read_text() == "epoch\tepoch_seconds\n1\t3.0\n2\t3.0\n"


if __name__ == "__main__" and sys.argv[1:] == ["compare-strategies"]:
    print(json.dumps(_compare_strategies()))


def test_a_dev_score_that_never_moves_is_named_in_a_warning(capsys):
    features, captions, vocab = toy_problem()
    data = toy_batches(features, captions, vocab, "inject")
    trainer = training.Trainer(toy_model(vocab, features, "inject"), learning_rate=0.01, clipnorm=5.0)
    summary = trainer.fit(data, data, 3, 5, NullLive(), dev_scores=lambda: {"cider": 0.0}, metric="cider")
    assert summary["best_epoch"] == 1
    assert "train: warning: the greedy dev CIDEr-D was 0.0000 in every epoch, so it chose nothing" in (
        capsys.readouterr().out
    )
    kept = training.KeepBest(trainer.model, margin=1e-5)
    for epoch, score in enumerate([0.2, 0.2, 0.3], start=1):
        kept.offer(epoch, score)
    assert not kept.unmoved


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (None, "TF_CONFIG is not JSON"),
        ("{oops", "TF_CONFIG is not JSON"),
        ('{"cluster": {"worker": ["a:1"]}}', "TF_CONFIG: task is missing"),
        ('{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}', "cluster.worker is \\['a'\\]; it"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}', "task worker 1 is not in its"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": "0"}}', "index is '0'; it must be"),
    ],
)
def test_a_cluster_description_is_checked_before_anything_waits_for_it(config, message):
    with pytest.raises(CaptionerError, match=message):
        training.cluster_task(config)
    assert training.cluster_task('{"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": "worker", "index": 1}}') == (
        "worker",
        1,
        2,
    )


def test_a_wait_past_its_deadline_ends_the_process_with_one_error_line():
    waits = "import time; from captioner.training import deadline\nwith deadline(0.5, 'no cluster'):\n  time.sleep(60)"
    result = subprocess.run([sys.executable, "-c", waits], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr.strip().splitlines()[-1]) == (1, "error: no cluster")
