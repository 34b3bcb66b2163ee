"""The decoder architectures (captioner.model.decoder): each learns, saves and reloads, and its one-token step computes
what its full-sequence forward pass does."""

import keras
import numpy as np
import pytest

from captioner.model import decoder
from captioner.model.decoder import Stepper
from captioner.model.spec import DecoderSpec
from captioner.training.trainer import Trainer
from tests.conftest import (
    NullLive,
    teacher_forced_fit,
    toy_batches,
    toy_config,
    toy_decoder,
    toy_problem,
    toy_spec,
)


@pytest.mark.parametrize("rnn", sorted(decoder.RNNS))
@pytest.mark.parametrize("arch", decoder.ARCHS)
def test_stepping_one_token_at_a_time_gives_the_full_sequence_logits(arch, rnn):
    keras.utils.set_random_seed(0)
    features, captions, vocab = toy_problem()
    architecture = toy_decoder(vocab, features, arch, rnn, dropout=0.3)  # dropout: inactive in both ways
    table = features if arch == "attention" else features.mean(axis=1)
    tokens = np.array([vocab.encode(tokens) for _, tokens in captions[:6]], dtype=np.int32)
    full = np.asarray(architecture.model([table[:6], tokens])["logits"])
    stepper = Stepper(architecture)
    states = stepper.start(table[:6], tokens.shape[1])
    for position in range(tokens.shape[1]):
        logits, states, attention = stepper.step(tokens[:, position], states)
        np.testing.assert_allclose(np.asarray(logits), full[:, position], rtol=1e-4, atol=1e-5)
        assert (attention is None) == (arch != "attention")


def test_the_same_seed_gives_the_same_initial_weights_and_layers_are_owned_not_looked_up():
    features, _, vocab = toy_problem()
    weights = []
    for _ in range(2):
        keras.utils.set_random_seed(3)
        weights.append(toy_decoder(vocab, features, "attention").model.get_weights())
    for first, second in zip(*weights, strict=True):
        np.testing.assert_array_equal(first, second)
    architecture = toy_decoder(vocab, features, "merge")
    assert architecture.head is architecture.model.get_layer("logits")  # the layer the model runs, not a copy


@pytest.mark.parametrize("rnn", sorted(decoder.RNNS))
@pytest.mark.parametrize("arch", decoder.ARCHS)
def test_every_decoder_learns_and_reloads_identically(arch, rnn, tmp_path):
    keras.utils.set_random_seed(0)
    features, captions, vocab = toy_problem()
    data = toy_batches(features, captions, vocab, arch)
    architecture = toy_decoder(vocab, features, arch, rnn)
    model = architecture.model
    trainer = Trainer(model, architecture.head, toy_config(arch, attention_reg=1.0))
    before = trainer.dev_loss(data, "dev")
    live = NullLive()
    summary = teacher_forced_fit(trainer, data, data, live, epochs=25, patience=25)
    after = trainer.dev_loss(data, "dev")
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


def test_a_decoder_of_another_shape_is_named_by_its_first_differing_layer():
    features, _, vocab = toy_problem()
    small, large = (toy_decoder(vocab, features, "inject") for _ in range(2))
    assert decoder.disagreement(small.model, large.model) is None
    wider = decoder.architecture(DecoderSpec("gru", "inject", 48, 16, 0.0), len(vocab))
    wider.build(features.shape[2:])
    assert "holds weights of shapes" in decoder.disagreement(small.model, wider.model)


@pytest.mark.parametrize("arch", ["attention", "transformer"])
def test_a_grid_decoder_grouped_by_image_has_each_captions_loss_and_gradients(arch):
    """The image-grouped model computes the image's projections once and repeats them: the loss and gradients of the
    same captions, to float32 round-off (no dropout), with an all-padding row where an image has fewer captions."""
    import tensorflow as tf

    from captioner.training.loss import forced_sums

    keras.utils.set_random_seed(0)
    features, _, vocab = toy_problem()
    architecture = decoder.architecture(toy_spec(arch), len(vocab))
    architecture.build(features.shape[1:])
    grouped = architecture.build_grouped(features.shape[1:], captions_per_image=3)
    assert architecture.reads_grid  # where grouping saves work
    tokens = np.random.default_rng(0).integers(3, len(vocab), size=(4 * 3, 7)).astype(np.int32)
    tokens[:, 0], tokens[5, 4:], tokens[7] = vocab.start_id, vocab.pad_id, vocab.pad_id
    apart = (architecture.model, np.repeat(features[:4], 3, axis=0))
    results = []
    for model, inputs in (apart, (grouped, features[:4])):
        with tf.GradientTape() as tape:
            loss, correct, count = forced_sums(model, architecture.head, tf.constant(inputs), tf.constant(tokens))
        gradients = tape.gradient(loss, architecture.model.trainable_variables)
        results.append(
            (float(loss), float(correct), float(count), [np.asarray(tf.convert_to_tensor(g)) for g in gradients])
        )
    (loss, correct, count, gradients), (shared_loss, shared_correct, shared_count, shared) = results
    assert (shared_correct, shared_count) == (correct, count) and count == 4 * 3 * 6 - 3 - 6
    assert shared_loss == pytest.approx(loss, rel=1e-5)
    for expected, found in zip(gradients, shared, strict=True):
        np.testing.assert_allclose(found, expected, rtol=1e-4, atol=1e-6)
