"""The one epoch loop (captioner.training.epochs): keep-best, early stopping, the learning-rate schedule, the divergence
check and the training log, the same for every phase."""

import json

import numpy as np
import pytest

from captioner import CaptionerError
from captioner.training import epochs
from captioner.training.epochs import Epoch, EpochLog, KeepBest
from captioner.training.trainer import Trainer
from tests.conftest import NullLive, teacher_forced_fit, toy_batches, toy_config, toy_decoder, toy_problem


def toy_trainer(vocab, features, learning_rate=0.01):
    architecture = toy_decoder(vocab, features, "inject")
    return Trainer(architecture.model, architecture.head, toy_config(learning_rate=learning_rate))


def test_early_stopping_restores_the_best_weights_and_the_learning_rate_drops_on_plateau():
    features, captions, vocab = toy_problem()
    train = toy_batches(features, captions, vocab, "inject")
    # A dev set with shuffled pairings: the train fit makes its loss worse, so the first epoch is best.
    dev = toy_batches(features, captions, vocab, "inject", shuffle_seed=None, reverse_rows=True)
    trainer, live = toy_trainer(vocab, features, learning_rate=0.05), NullLive()
    summary = teacher_forced_fit(trainer, train, dev, live, epochs=30, patience=4, lr_patience=2, lr_factor=0.5)
    assert summary["epochs_run"] == summary["best_epoch"] + 4 < 30
    assert trainer.dev_loss(dev, "dev").loss == pytest.approx(summary["best_dev_loss"], rel=1e-5)
    rates = live.values("by_epoch/learning_rate")
    assert rates[0] == pytest.approx(0.05) and rates[-1] == pytest.approx(0.025)


@pytest.mark.parametrize("broken", ["empty dev batches", "features with a NaN"])
def test_a_loss_that_is_not_finite_stops_training_instead_of_keeping_the_untrained_weights(broken):
    features, captions, vocab = toy_problem()
    if broken == "features with a NaN":
        features[3, 0, 0] = np.nan
    train = toy_batches(features, captions, vocab, "inject")
    dev = toy_batches(features, captions[:0] if broken == "empty dev batches" else captions, vocab, "inject")
    expected = "dev" if broken == "empty dev batches" else "train"
    expected = rf"the {expected} loss is nan at epoch 1: training diverged or .*; no model saved"
    with pytest.raises(CaptionerError, match=expected):
        teacher_forced_fit(toy_trainer(vocab, features), train, dev, epochs=5, patience=5)


@pytest.mark.parametrize(("metric", "best"), [("bleu4", 2), ("cider", 5)])
def test_a_dev_score_picks_the_weights_kept_while_the_dev_loss_paces_training(metric, best):
    features, captions, vocab = toy_problem()
    data = toy_batches(features, captions, vocab, "inject")
    trainer = toy_trainer(vocab, features)
    series = {"bleu4": [0.1, 0.3, 0.2, 0.25, 0.1, 0.2], "cider": [0.5, 0.4, 0.6, 0.3, 0.9, 0.2]}
    scores, snapshots = iter(zip(*series.values(), strict=True)), []

    def dev_scores():
        snapshots.append(trainer.model.get_weights())
        return dict(zip(series, next(scores), strict=True))

    live, select_by = NullLive(), f"dev_{metric}"
    summary = teacher_forced_fit(
        trainer, data, data, live, dev_scores, epochs=6, patience=3, lr_patience=2, select_by=select_by
    )
    # The score stalled for epochs past patience 3, but the dev loss kept falling: training went on
    # at the same rate, and the weights kept are those of the best ``metric``.
    assert (summary["best_epoch"], summary["epochs_run"]) == (best, 6)
    assert summary[f"best_dev_{metric}"] == max(series[metric]) and len(summary) == 4
    for restored, kept in zip(trainer.model.get_weights(), snapshots[best - 1], strict=True):
        np.testing.assert_array_equal(restored, kept)
    for name, values in series.items():  # both scores logged, whichever keeps the weights
        assert live.values(f"by_epoch/dev_{name}") == values
    assert live.values("by_epoch/learning_rate") == [pytest.approx(0.01)] * 6


def test_a_dev_score_that_never_moves_is_named_in_a_warning(capsys):
    features, captions, vocab = toy_problem()
    data = toy_batches(features, captions, vocab, "inject")
    trainer = toy_trainer(vocab, features)
    summary = teacher_forced_fit(
        trainer, data, data, None, lambda: {"cider": 0.0}, epochs=3, patience=5, select_by="dev_cider"
    )
    assert summary["best_epoch"] == 1
    assert "train: warning: the greedy dev CIDEr-D was 0.0000 in every epoch, so it chose nothing" in (
        capsys.readouterr().out
    )
    kept = KeepBest(trainer.model, margin=1e-5)
    for epoch, score in enumerate([0.2, 0.2, 0.3], start=1):
        kept.offer(epoch, score)
    assert not kept.unmoved


class ScriptedPhase:
    """A phase whose epochs report scripted numbers: the loop's rules, with no model learning."""

    name, epoch_label, score_name, pace_name = "scripted training", "scripted epoch", "score", "pace"
    keep_margin = pace_margin = 0.0

    def __init__(self, scores, paces, patience, lr_patience=0, start=-np.inf, losses=None):
        self.scores, self.paces, self.start_score, self.losses = scores, paces, start, losses or {}
        self.epochs, self.patience, self.lr_patience, self.lr_factor = len(scores), patience, lr_patience, 0.5

    def start(self, summary):
        self.summary_before = dict(summary)
        return self.start_score

    def run_epoch(self, epoch):
        return Epoch({"scripted": epoch}, "", self.scores[epoch - 1], self.paces[epoch - 1], self.losses)

    def summary(self, kept, epochs_run):
        return {"kept": kept.epoch, "run": epochs_run}


def test_a_new_phase_needs_no_loop_code_and_each_phase_starts_from_the_summary_before_it():
    features, _, vocab = toy_problem()
    trainer, live = toy_trainer(vocab, features, learning_rate=0.1), NullLive()
    first = ScriptedPhase([1, 3, 2, 2, 2, 1], [1, 2, 3, 3, 3, 3], patience=3, lr_patience=2)
    second = ScriptedPhase([5, 4], [5, 4], patience=1, start=4.5)  # beats its start once, then stops
    summary = epochs.fit([first, second], trainer, live)
    assert summary == {"kept": 1, "run": 2}  # the later phase's keys over the earlier's
    assert first.summary_before == {} and second.summary_before == {"kept": 2, "run": 6}
    # The pace stalled from epoch 3: the rate halved after 2 epochs (epoch 5), training stopped after 3 (epoch 6).
    assert live.values("scripted") == [1, 2, 3, 4, 5, 6, 1, 2]
    rates = live.values("by_epoch/learning_rate")
    assert rates[:6] == [pytest.approx(0.1)] * 5 + [pytest.approx(0.05)]


def test_any_phase_whose_loss_is_not_finite_stops_training():
    features, _, vocab = toy_problem()
    phase = ScriptedPhase([1.0], [1.0], patience=1, losses={"policy": float("inf")})
    with pytest.raises(CaptionerError, match="the policy loss is inf at epoch 1: training diverged"):
        epochs.fit([phase], toy_trainer(vocab, features), NullLive())


def test_the_training_log_replaces_the_last_one_only_when_training_finishes(tmp_path):
    folder, timings = tmp_path / "metrics" / "train", tmp_path / "logs" / "epochs.tsv"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text('{"best_epoch": 7}\n')
    with pytest.raises(KeyboardInterrupt), EpochLog(folder, timings) as live:
        live.log_metric("train/loss", 1.5)
        live.log_metric("epoch_seconds", 3.0)
        live.next_step()  # DVCLive writes its own metrics.json here, which must not reach the folder
        raise KeyboardInterrupt
    assert sorted(path.name for path in folder.iterdir()) == ["metrics.json"]
    assert (folder / "metrics.json").read_text() == '{"best_epoch": 7}\n'
    assert not list(folder.parent.glob(".train*")), "scratch left behind"

    with EpochLog(folder, timings) as live:
        for epoch in (1, 2):
            live.log_metric("train/loss", 1.0 / epoch)
            live.log_metric("epoch_seconds", 3.0)
            live.next_step()
        live.summary = {"best_epoch": 2}
    assert json.loads((folder / "metrics.json").read_text()) == {"best_epoch": 2}
    assert (folder / "plots" / "metrics" / "train" / "loss.tsv").read_text().split("\n")[1:3] == ["1\t1.0", "2\t0.5"]
    assert not (folder / "plots" / "metrics" / "by_epoch").exists()  # nothing logged there: no file, no empty plot
    assert timings.read_text() == "epoch\tepoch_seconds\n1\t3.0\n2\t3.0\n"
