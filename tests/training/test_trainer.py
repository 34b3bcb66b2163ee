"""The optimizers and compiled steps (captioner.training.trainer): mixed precision, and mirrored training equal to one
device's."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from captioner.model import checkpoint, decoding
from captioner.model.decoder import Stepper
from captioner.training import train as training
from captioner.training.trainer import Trainer
from tests.conftest import PROJECT, teacher_forced_fit, toy_batches, toy_config, toy_decoder, toy_problem, toy_spec

RECURRENCE = {"inject": "rnn", "attention": "attention_rnn", "transformer": "block_0"}  # the layer doing the most work


@pytest.mark.parametrize(
    ("precision", "arch"),
    [("mixed_bfloat16", "attention"), ("mixed_float16", "inject"), ("mixed_float16", "transformer")],
)
def test_mixed_precision_trains_and_the_saved_model_reloads_and_decodes_in_float32(precision, arch, tmp_path):
    features, captions, vocab = toy_problem()
    data = toy_batches(features, captions, vocab, arch)
    keras.utils.set_random_seed(0)
    try:
        training.use_precision(precision)
        architecture = toy_decoder(vocab, features, arch)
        model = architecture.model
        trainer = Trainer(model, architecture.head, toy_config(arch, attention_reg=1.0))
        before = trainer.dev_loss(data, "dev")
        summary = teacher_forced_fit(trainer, data, data, epochs=30, patience=30)
    finally:
        training.use_precision("float32")
    assert model.get_layer(RECURRENCE[arch]).compute_dtype == precision[6:]
    assert all(weight.dtype == np.float32 for weight in model.get_weights())
    assert summary["best_dev_loss"] < before.loss / 4
    if precision == "mixed_float16":
        assert isinstance(trainer.optimizers[0], keras.optimizers.LossScaleOptimizer)

    attrs = {"encoder": "toy", "weights": "w", "weights_param": "imagenet", "input_size": 96}
    checkpoint.save(tmp_path, model, attrs, vocab, toy_spec(arch))
    loaded = checkpoint.Trained.load(tmp_path)
    reloaded = loaded.model
    assert {layer.dtype_policy.name for layer in reloaded.layers} == {"float32"}
    inputs, tokens = next(iter(data))
    logits = model([inputs, tokens])["logits"]
    assert logits.dtype == tf.float32  # the softmax's range
    np.testing.assert_allclose(reloaded([inputs, tokens])["logits"], logits, atol=0.15)
    table = features if arch == "attention" else features.mean(axis=1)
    greedy = decoding.greedy(Stepper(loaded.architecture), table.__getitem__, np.arange(4), 6).ids
    words = [vocab.tokens[i] for i in greedy[:, 1]]
    assert words == [captions[i][1][2] for i in range(4)]  # the peak channel's word, as trained


@pytest.mark.e2e  # TensorFlow in processes of its own
def test_mirrored_training_over_two_devices_matches_one_device():
    # Logical devices must be configured before TensorFlow starts, so this runs in a fresh process.
    result = subprocess.run(
        [sys.executable, "-m", "tests.training.test_trainer", "compare-strategies"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    assert report["default_loss"] == pytest.approx(report["mirrored_loss"], rel=1e-5)
    assert report["max_weight_difference"] < 1e-5
    assert report["weights_moved"] > 1e-3


def _compare_strategies() -> dict:
    """Train the same model for two epochs on the same batches, on one device and mirrored over two CPUs."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    features, captions, vocab = toy_problem(num_images=13)  # batches of 8 and 5: an uneven split
    keras.utils.set_random_seed(0)
    initial = toy_decoder(vocab, features, "inject").model.get_weights()
    results = {}
    for name, strategy in (("default", tf.distribute.get_strategy()), ("mirrored", mirrored)):
        with strategy.scope():
            architecture = toy_decoder(vocab, features, "inject")
            model = architecture.model
            model.set_weights(initial)
            trainer = Trainer(model, architecture.head, toy_config(clipnorm=100.0), strategy)
        data = toy_batches(features, captions, vocab, "inject")
        stats = [trainer.train_epoch(data, name) for _ in range(2)]
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
