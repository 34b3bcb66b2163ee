"""Self-critical sequence training (captioner.training.self_critical)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from captioner.model import decoding
from captioner.model.decoder import Stepper
from captioner.text import strip_special
from captioner.training import epochs
from captioner.training.self_critical import SampledImages, SelfCritical, advantages, caption_tokens
from captioner.training.trainer import Trainer
from tests import reference_decoding as reference
from tests.conftest import NullLive, toy_batches, toy_config, toy_decoder, toy_problem


def test_caption_tokens_start_the_caption_stop_at_its_first_end_and_pad_the_rest():
    sampled = np.array([[5, 6, 2, 2], [7, 2, 2, 2], [5, 6, 7, 8]])  # end id 2; the last never ends
    np.testing.assert_array_equal(caption_tokens(sampled), [[1, 5, 6, 2, 0], [1, 7, 2, 0, 0], [1, 5, 6, 7, 8]])


def test_each_samples_baseline_is_the_mean_reward_of_the_images_other_samples():
    rewards = np.array([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]])
    np.testing.assert_allclose(advantages(rewards), [[1 - 2.5, 2 - 2.0, 3 - 1.5], [0, 0, 0]])


def toy_self_critical(arch="attention", samples=4, seed=0, dropout=0.0, dev_scores=None, grouped=False, **train):
    features, captions, vocab = toy_problem(num_images=24)
    keras.utils.set_random_seed(seed)
    architecture = toy_decoder(vocab, features, arch, dropout=dropout)
    table = features if arch == "attention" else features.mean(axis=1)
    references = [[strip_special(tokens)] for _, tokens in captions]
    settings = {"self_critical_samples": samples, "batch_size": 8 * samples, "seed": seed} | train
    config = toy_config(arch, **settings)
    policy = architecture.build_grouped(table.shape[1:], samples) if grouped else None
    trainer = Trainer(architecture.model, architecture.head, config, policy_model=policy)
    rows = np.arange(len(features))
    images = SampledImages(table.__getitem__, table.shape[1:], rows, references, vocab, grouped)
    scst = SelfCritical(trainer, Stepper(architecture), images, config, dev_scores)
    return scst, table, rows, vocab


@pytest.mark.parametrize("arch", ["attention", "transformer"])
def test_the_policy_step_makes_a_caption_with_positive_advantage_likelier_and_negative_less_likely(arch):
    scst, table, rows, vocab = toy_self_critical(arch, dropout=0.5)
    features = table[:2]
    sampled = decoding.sample(scst.stepper, features, 6, np.random.default_rng(0))

    def log_probs():
        ids = (vocab.start_id, vocab.end_id)
        return reference.sequence_log_prob(scst.stepper, table.__getitem__, rows[:2], sampled, *ids)

    before = log_probs()
    tokens = caption_tokens(sampled)
    # The step's summed loss is the advantage-weighted cross-entropy: the same log-probabilities the
    # sampler drew from (no dropout, although the model has some).
    loss_sum, _, _ = scst.step(features, tokens, np.array([1.0, -1.0], np.float32))
    assert float(loss_sum) == pytest.approx(-(before[0] - before[1]), rel=1e-4)
    after = log_probs()
    assert after[0] > before[0] + 1e-3 and after[1] < before[1] - 1e-3


def test_samples_follow_the_models_distribution_never_draw_padding_and_repeat_with_the_seed():
    scst, table, _, vocab = toy_self_critical()
    features = np.repeat(table[:1], 4000, axis=0)
    first = decoding.sample(scst.stepper, features, 3, np.random.default_rng(5))
    again = decoding.sample(scst.stepper, features, 3, np.random.default_rng(5))
    np.testing.assert_array_equal(first, again)
    logits, _, _ = scst.stepper.step(np.full(1, vocab.start_id, np.int32), scst.stepper.start(features[:1], 3))
    probabilities = np.exp(logits.numpy()[0])
    probabilities[vocab.pad_id] = 0.0  # never drawn: the rest share its mass
    probabilities /= probabilities.sum()
    drawn = np.bincount(first[:, 0], minlength=len(vocab)) / len(first)
    assert drawn[vocab.pad_id] == 0
    likely = probabilities > 0.02
    assert likely.sum() >= 3  # an untrained model spreads its bets, so this tests the frequencies
    np.testing.assert_allclose(drawn[likely], probabilities[likely], atol=0.025)
    ended = first[:, :-1] == vocab.end_id
    assert (first[:, 1:][ended] == vocab.end_id).all()  # nothing but end after the first end


def test_self_critical_epochs_raise_the_reward_repeatably():
    rewards = []
    for _ in range(2):
        scst, *_ = toy_self_critical(arch="inject", samples=4)
        rewards.append([scst.train_epoch("epoch")[0] for _ in range(16)])
    assert rewards[0] == rewards[1]  # same seed, same samples, same updates
    assert np.mean(rewards[0][-3:]) > 2.5 * np.mean(rewards[0][:3])  # CIDEr-D 0.38 → 1.2


@pytest.mark.parametrize("metric", ["bleu4", "cider"])
def test_the_phase_keeps_the_best_dev_score_weights_stops_on_patience_and_keeps_the_start_if_nothing_beats_it(metric):
    scores, snapshots = iter([0.3, 0.35, 0.32, 0.33, 0.34, 0.9]), []

    def dev_scores():
        snapshots.append(model.get_weights())
        score = next(scores)
        other = "cider" if metric == "bleu4" else "bleu4"
        return {metric: score, other: 1 - score}  # logged, but best at epoch 1: it must not decide

    settings = {
        "self_critical_epochs": 6,
        "self_critical_patience": 3,
        "self_critical_lr": 0.005,
        "select_by": f"dev_{metric}",
    }
    scst, *_ = toy_self_critical(arch="inject", dev_scores=dev_scores, **settings)
    model, live = scst.trainer.model, NullLive()
    start = model.get_weights()
    summary = epochs.run_phase(scst, scst.trainer, live, {f"best_dev_{metric}": 0.31})
    assert summary == {"self_critical_epochs_run": 5, "self_critical_best_epoch": 2, f"best_dev_{metric}": 0.35}
    assert live.values(f"by_epoch/dev_{metric}") == [0.3, 0.35, 0.32, 0.33, 0.34]
    assert len([name for name, _ in live.logged if name.startswith("by_epoch/dev_")]) == 10
    for restored, best in zip(model.get_weights(), snapshots[1], strict=True):
        np.testing.assert_array_equal(restored, best)
    assert live.values("by_epoch/learning_rate") == [0.005] * 5

    scores = iter([0.1, 0.2])
    scst.dev_scores, scst.epochs = lambda: {metric: next(scores)}, 2
    summary = epochs.run_phase(scst, scst.trainer, live, {f"best_dev_{metric}": 0.31})
    assert summary["self_critical_best_epoch"] == 0
    for restored, best in zip(model.get_weights(), snapshots[1], strict=True):
        np.testing.assert_array_equal(restored, best)
    assert any(np.abs(a - b).max() > 0 for a, b in zip(start, snapshots[1], strict=True))


def test_without_a_kept_dev_score_the_phase_starts_from_the_score_of_the_weights_it_was_given():
    scst, *_ = toy_self_critical(arch="inject", dev_scores=lambda: {"bleu4": 0.4}, self_critical_epochs=1)
    assert scst.start({"best_epoch": 3, "best_dev_loss": 1.2}) == 0.4
    assert scst.start({"best_dev_bleu4": 0.2}) == 0.2


def test_self_critical_training_starts_adam_afresh_as_if_the_teacher_forced_steps_had_left_no_moments():
    features, captions, vocab = toy_problem()
    batches = toy_batches(features, captions, vocab, "inject")
    first, second = (toy_decoder(vocab, features, "inject") for _ in range(2))
    forced = Trainer(first.model, first.head, toy_config(learning_rate=0.01))
    forced.train_epoch(batches, "teacher forcing")
    fresh_model = second.model
    fresh_model.set_weights(forced.model.get_weights())
    fresh = Trainer(fresh_model, second.head, toy_config(learning_rate=0.002))
    forced.restart(0.002)
    assert int(forced.optimizers[0].iterations.numpy()) == 0
    spec = (*batches.element_spec, tf.TensorSpec((None,), tf.float32))
    table, tokens = next(iter(batches))
    advantage = np.linspace(-1, 1, len(tokens)).astype(np.float32)
    for trainer in (forced, fresh):
        for _ in range(3):
            trainer.policy_step(spec)(table, tokens, advantage)
    for restarted, new in zip(forced.model.get_weights(), fresh_model.get_weights(), strict=True):
        np.testing.assert_allclose(restarted, new, rtol=1e-5, atol=1e-7)


def test_fewer_than_two_samples_per_image_is_refused():
    with pytest.raises(ValueError, match="2 or more samples"):
        toy_self_critical(samples=1)


def test_a_policy_step_grouped_by_image_trains_as_the_samples_apart_do():
    """The attention decoder's policy step on each image's features once (its model repeats the projections for
    the samples): the epoch's rewards and losses and the weights after it are those of the samples apart."""
    outcomes = []
    for grouped in (False, True):
        scst, *_ = toy_self_critical("attention", grouped=grouped)
        reward, loss = scst.train_epoch("self-critical")
        outcomes.append((reward, loss, scst.trainer.model.get_weights()))
    (reward, loss, weights), (grouped_reward, grouped_loss, grouped_weights) = outcomes
    assert grouped_reward == pytest.approx(reward, rel=1e-6) and grouped_loss == pytest.approx(loss, rel=1e-4)
    for expected, found in zip(weights, grouped_weights, strict=True):
        np.testing.assert_allclose(found, expected, rtol=1e-3, atol=1e-5)
