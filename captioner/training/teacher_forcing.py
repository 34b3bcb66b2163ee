"""Teacher forcing, the first phase of training: the train step over the train captions, each word predicted from the
words before it, and the dev loss (``captioner.training.loss`` holds the loss itself)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from captioner.training.batching import CaptionBatches
from captioner.training.config import TrainConfig
from captioner.training.epochs import BY_EPOCH, LOSS_MARGIN, METRIC_NAMES, SCORE_MARGIN, Epoch, KeepBest, shown
from captioner.training.trainer import Trainer


class TeacherForcing:
    """Teacher-forced epochs (a ``captioner.training.epochs.Phase``) as ``config`` says: the train step over the
    ``"train"`` ``batches``, the dev loss over the ``"dev"`` ones, and with ``dev_scores`` (a function scoring the model
    as it is now, e.g. ``captioner.training.train.dev_scorer``'s; all its scores are logged) the greedy dev scores.

    The dev loss paces training. The weights kept are those of the lowest dev loss, or with ``dev_scores`` of the
    best ``metric``: the metric users read, not its proxy. That score only picks the epoch. It jumps too much from
    epoch to epoch to pace training: on Flickr8k, LR drops and stops that followed it halved the rate while the
    loss still fell fast, and stopped training while it still did.
    """

    name, epoch_label, pace_name, pace_margin = "teacher-forced training", "epoch", "dev loss", LOSS_MARGIN

    def __init__(
        self,
        trainer: Trainer,
        batches: dict[str, CaptionBatches],
        config: TrainConfig,
        dev_scores: Callable[[], dict[str, float]] | None = None,
    ):
        self.trainer, self.train, self.dev = trainer, batches["train"], batches["dev"]
        self.dev_scores, self.metric = dev_scores, config.selection_score
        self.epochs, self.patience = config.epochs, config.patience
        self.lr_patience, self.lr_factor = config.lr_patience, config.lr_factor
        self.keep_margin = SCORE_MARGIN if dev_scores is not None else LOSS_MARGIN
        self.score_name = f"greedy dev {METRIC_NAMES[self.metric]}" if dev_scores is not None else "dev loss"
        self.dev_losses: list[float] = []

    def start(self, summary: dict) -> float:
        return -np.inf

    def run_epoch(self, epoch: int) -> Epoch:
        train = self.trainer.train_epoch(self.train, f"train: epoch {epoch}")
        dev = self.trainer.dev_loss(self.dev, "train: dev loss")
        scores = self.dev_scores() if self.dev_scores is not None else {}
        self.dev_losses.append(dev.loss)
        logged = {}
        for split, stats in (("train", train), ("dev", dev)):
            logged |= {f"{split}/loss": round(stats.loss, 4), f"{split}/token_accuracy": round(stats.accuracy, 4)}
        logged |= {f"{BY_EPOCH}/dev_{metric}": round(score, 4) for metric, score in scores.items()}
        text = f"loss {train.loss:.3f}, dev loss {dev.loss:.3f}{shown(scores)}, dev token accuracy {dev.accuracy:.3f}"
        score = scores[self.metric] if scores else -dev.loss
        return Epoch(logged, text, score, -dev.loss, losses={"train": train.loss, "dev": dev.loss})

    def summary(self, kept: KeepBest, epochs_run: int) -> dict:
        best_loss = self.dev_losses[kept.epoch - 1] if kept.epoch else np.inf
        summary = {"best_epoch": kept.epoch, "best_dev_loss": float(best_loss), "epochs_run": epochs_run}
        return summary | ({f"best_dev_{self.metric}": float(kept.score)} if self.dev_scores is not None else {})
