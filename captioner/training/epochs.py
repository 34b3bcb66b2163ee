"""The one epoch loop of training. Each phase (teacher forcing, self-critical training, …) runs one epoch at a
time and says what it measured (an ``Epoch``); ``fit`` owns everything around it for every phase: the divergence
check, logging, keeping the best weights, the learning-rate schedule and early stopping. A new phase is a class
with the ``Phase`` attributes and methods, and touches no loop code."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from captioner import CaptionerError
from captioner.files import atomic_path

LOSS_MARGIN = 1e-4  # a dev loss lower by less than this is no improvement (for the kept weights and the pacing)
SCORE_MARGIN = 1e-5  # a dev BLEU-4 or CIDEr-D higher by less than this is no improvement
METRIC_NAMES = {"bleu4": "BLEU-4", "cider": "CIDEr-D"}  # as printed
# DVCLive's folder of the curves a run may or may not log (dev scores, the reward, the encoder's learning rate),
# beside the learning rate it always logs (so the folder exists): dvc.yaml plots each file in it, so an unlogged one
# is no empty plot.
BY_EPOCH = "by_epoch"


def shown(scores: dict[str, float]) -> str:
    """Greedy dev scores as an epoch's console line shows them (nothing when none were scored)."""
    return "".join(f", dev {METRIC_NAMES[metric]} {score:.4f}" for metric, score in scores.items())


@dataclass
class Epoch:
    """What one epoch of a phase measured."""

    logged: dict[str, float]  # curve name → value, into the training log
    text: str  # the console line's middle: "loss 3.1, dev loss 3.3, …"
    score: float  # what keeps the epoch's weights: higher is better
    pace: float  # what paces the phase (early stopping, learning-rate drops): higher is better
    losses: dict[str, float] = field(default_factory=dict)  # name → a loss that must be finite


class Phase(Protocol):
    """One way of training, run epoch by epoch by ``fit``."""

    name: str  # "teacher-forced training", "self-critical training"
    epoch_label: str  # as the console names its epochs: "epoch 3", "self-critical epoch 3"
    score_name: str  # what keeps an epoch's weights: "dev loss", "greedy dev CIDEr-D"
    pace_name: str  # what paces the phase: "dev loss"
    epochs: int  # at most
    patience: int  # epochs without a better pace before stopping
    lr_patience: int  # epochs without a better pace before the learning rate drops (0: never)
    lr_factor: float
    keep_margin: float  # a score better by less than this keeps no new weights
    pace_margin: float

    def start(self, summary: dict) -> float:
        """Ready the phase after those before it (their ``summary``); the score of the weights it starts from,
        which an epoch must beat to be kept (-inf: the first epoch is kept)."""

    def run_epoch(self, epoch: int) -> Epoch:
        """Train one epoch and measure it."""

    def summary(self, kept: KeepBest, epochs_run: int) -> dict:
        """The phase's tracked results, once it stopped with the weights ``kept`` restored."""


def fit(phases: list[Phase], trainer, live: EpochLog) -> dict:
    """Run each phase in turn on ``trainer`` (a ``captioner.training.trainer.Trainer``), logging into ``live``; the
    summary of every phase, later keys over earlier ones."""
    summary: dict = {}
    for phase in phases:
        summary |= run_phase(phase, trainer, live, summary)
    return summary


def run_phase(phase: Phase, trainer, live: EpochLog, summary: dict) -> dict:
    """Epochs of ``phase`` until its ``epochs``, or ``patience`` epochs without a better pace; then the best
    weights restored. After ``lr_patience`` epochs without a better pace the learning rate is multiplied by
    ``lr_factor``."""
    start = phase.start(summary)
    kept = KeepBest(trainer.model, phase.keep_margin, start)
    pace = Plateau(phase.pace_margin, start)
    epoch = 0
    for epoch in range(1, phase.epochs + 1):
        started = time.perf_counter()
        result = phase.run_epoch(epoch)
        seconds = time.perf_counter() - started
        diverged(result.losses, epoch)
        rates = trainer.learning_rates
        log_epoch(live, result.logged, rates, seconds)
        print(f"train: {phase.epoch_label} {epoch}: {result.text}, lr {rates[0]:.2g} ({seconds:.1f}s)")
        kept.offer(epoch, result.score)
        if pace.offer(epoch, result.pace):
            continue
        if epoch - pace.epoch >= phase.patience:
            print(
                f"train: stopping {phase.name} early, no better {phase.pace_name} than {abs(pace.best):.4f} (epoch "
                f"{pace.epoch}) for {phase.patience} epochs; best {phase.score_name} {abs(kept.score):.4f} at epoch "
                f"{kept.epoch}"
            )
            break
        if phase.lr_patience and epoch - pace.changed >= phase.lr_patience:
            trainer.scale_learning_rates(phase.lr_factor)
            pace.changed = epoch
    kept.restore()
    if kept.unmoved:
        print(
            f"train: warning: the {phase.score_name} was {abs(kept.score):.4f} in every epoch, so it chose nothing "
            f"(epoch {kept.epoch} kept); a larger dev split says more"
        )
    return phase.summary(kept, epoch)


def diverged(losses: dict[str, float], epoch: int) -> None:
    """A CaptionerError if a loss is not finite: NaN compares false, so no epoch would beat the start and the
    untrained weights would be kept."""
    for name, loss in losses.items():
        if not np.isfinite(loss):
            raise CaptionerError(
                f"the {name} loss is {loss} at epoch {epoch}: training diverged or the {name} batches are empty; "
                "no model saved (a lower train.learning_rate may help)"
            )


def log_epoch(live: EpochLog, logged: dict[str, float], rates: list[float], seconds: float) -> None:
    """One epoch's values into the training log (see ``EpochLog``)."""
    for name, value in logged.items():
        live.log_metric(name, value)
    live.log_metric(f"{BY_EPOCH}/learning_rate", float(f"{rates[0]:.3g}"))
    if len(rates) > 1:
        live.log_metric(f"{BY_EPOCH}/encoder_learning_rate", float(f"{rates[1]:.3g}"))
    live.log_metric("epoch_seconds", round(seconds, 1))
    live.next_step()


class Plateau:
    """How long a value (higher is better) has not improved by more than ``margin`` since ``epoch``, and since the
    learning rate last ``changed``."""

    def __init__(self, margin: float, best: float = -np.inf):
        self.margin, self.best, self.epoch, self.changed = margin, best, 0, 0

    def offer(self, epoch: int, value: float) -> bool:
        """Whether ``value`` beats the best (then the best, and the learning rate's last change, move here)."""
        if value > self.best + self.margin:
            self.best, self.epoch, self.changed = value, epoch, epoch
            return True
        return False


class KeepBest(Plateau):
    """A ``Plateau`` of the model's score that also holds ``model``'s weights at its best (starting from the weights
    it has now): the one keep-best rule of every training phase."""

    def __init__(self, model, margin: float, score: float = -np.inf):
        super().__init__(margin, score)
        self.model, self.weights = model, model.get_weights()
        self.offered: list[float] = []

    @property
    def score(self) -> float:
        return self.best

    @property
    def unmoved(self) -> bool:
        """Whether two or more epochs were offered and their scores never moved beyond the margin."""
        return len(self.offered) > 1 and max(self.offered) - min(self.offered) <= self.margin

    def offer(self, epoch: int, score: float) -> bool:
        """Keep the model's weights if ``score`` beats the best; whether it did."""
        self.offered.append(score)
        if not super().offer(epoch, score):
            return False
        self.weights = self.model.get_weights()
        return True

    def restore(self) -> None:
        self.model.set_weights(self.weights)


class EpochLog:
    """Per-epoch values, each where it belongs: what describes the model goes to DVCLive's plots (tracked in
    git, so byte-identical when the model is); wall-clock timings go to a TSV outside git, since they change
    every run and a reviewer should not read machine load as a result. Epochs count from 1, as printed.

    Set ``summary`` before leaving the ``with`` block: it becomes DVCLive's ``metrics.json``, alone (not the
    last epoch's values nor a step count). DVCLive rewrites its files every epoch, so it writes into a scratch
    folder that replaces ``folder`` only when training finishes: an interrupted run leaves the last one's."""

    UNTRACKED = ("epoch_seconds",)

    def __init__(self, folder: Path, timings: Path):
        self.folder, self.timings = Path(folder), Path(timings)
        self.row: dict[str, float] = {}
        self.summary: dict[str, float] = {}

    def __enter__(self) -> EpochLog:
        from dvclive import Live

        self.replacing = atomic_path(self.folder)
        scratch = self.replacing.__enter__()
        self.live = Live(dir=str(scratch), save_dvc_exp=False, dvcyaml=False, report=None)
        self.live.step = 1
        self.timings.parent.mkdir(parents=True, exist_ok=True)
        self.timings.write_text("epoch\tepoch_seconds\n")
        return self

    def __exit__(self, *exc) -> bool:
        self.live.end()
        if exc[0] is None:
            rounded = {key: round(value, 4) for key, value in self.summary.items()}
            (Path(self.live.dir) / "metrics.json").write_text(json.dumps(rounded, indent=2) + "\n")
            # DVC's list of the folder's cached outputs: tracked by git, not the stage's to drop with the old log.
            if (self.folder / ".gitignore").is_file():
                shutil.copy2(self.folder / ".gitignore", Path(self.live.dir) / ".gitignore")
        return self.replacing.__exit__(*exc)

    def log_metric(self, name: str, value: float) -> None:
        if name in self.UNTRACKED:
            self.row[name] = value
        else:
            self.live.log_metric(name, value)

    def next_step(self) -> None:
        with open(self.timings, "a") as out:
            out.write(f"{self.live.step}\t{self.row.get('epoch_seconds', '')}\n")
        self.row = {}
        self.live.next_step()
