"""A training run, from its config to the saved model: ``run``.

How a run flows: ``run`` creates the distribution strategy and sets the precision, seeds everything, reads the
vocabulary and the train and dev captions, and builds the decoder's architecture (``captioner.decoder``). What
it trains on is a ``TrainingRun``: the cached features (``frozen_run``), or a fine-tuned encoder joined to the
decoder (``captioner.finetuning.training_run``). A ``captioner.trainer.Trainer`` holds the optimizers and the
compiled steps; ``phases`` lists the ways of training in order (teacher forcing, then self-critical training when
asked), and ``captioner.epochs.fit`` runs them epoch by epoch, keeping the best weights. The model and its card
(decoder spec and this config) go to the model directory of the project's ``captioner.layout.Layout``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import tensorflow as tf

from captioner import decoding, distribute, encoders, metrics
from captioner.batching import CaptionBatches, encode_split
from captioner.checkpoint import save
from captioner.config import TrainConfig
from captioner.datasets import read_captions, split_references
from captioner.decoder import Architecture, Stepper, architecture
from captioner.epochs import (
    BY_EPOCH,
    LOSS_MARGIN,
    METRIC_NAMES,
    SCORE_MARGIN,
    Epoch,
    EpochLog,
    KeepBest,
    Phase,
    fit,
    shown,
)
from captioner.features import FeatureFile
from captioner.layout import Layout, TrainingOutputs
from captioner.params import check_feature_batch
from captioner.self_critical import SampledImages, SelfCritical
from captioner.text import Vocabulary, initial_embeddings
from captioner.trainer import Trainer, TrainingRun, frozen_run

Captions = dict[str, list[tuple[str, list[str]]]]  # split → (image, tokens) pairs


def run(config: TrainConfig, layout: Layout, outputs: TrainingOutputs | None = None) -> dict:
    """Train the model ``config`` describes on the project in ``layout`` (its features, captions and vocabulary) and
    save it there, or to ``outputs`` (on a cluster: the chief alone); its training summary."""
    strategy = distribute.strategy_named(config.strategy)
    use_precision(config.precision)
    if config.self_critical_epochs:  # checked now, not after the teacher-forced epochs
        SelfCritical.check_devices(strategy.num_replicas_in_sync)
    seed_everything(config.seed)
    vocab = Vocabulary.load(layout.vocab)
    config.decoder.check_fits(vocab.max_length)
    embeddings = initial_embeddings(config.embeddings, config.decoder.embedding_dim, vocab, config.seed)
    captions = {split: read_captions(layout.split_captions(split)) for split in ("train", "dev")}
    outputs = outputs or layout.training_outputs(config.member)
    with FeatureFile(layout.features_file(config.encoder), config.encoder) as store, ExitStack() as stack:
        chief = distribute.is_chief(strategy)
        if not chief:  # every worker of a cluster trains; the chief alone writes, the others log to scratch
            scratch = Path(stack.enter_context(TemporaryDirectory()))
            outputs = outputs._replace(log=scratch, timings=scratch / "epochs.tsv")
        check_feature_batch(config.batch_size, store.shape(config.decoder.pooled(store.pooling)))
        encoded = {split: encode_split(split, pairs, store.row_of, vocab) for split, pairs in captions.items()}
        print(f"train: {strategy.num_replicas_in_sync} replica(s), {config.batch_size} captions per step in all")
        with strategy.scope():
            decoder = architecture(config.decoder, len(vocab))
            model = decoder.build(store.shape(config.decoder.pooled(store.pooling)), embeddings)
        on = stack.enter_context(training_run(config, model, store, encoded, strategy, layout.images))
        deterministic_ops()
        with strategy.scope():
            trainer = Trainer(on.trained, decoder.head, config, strategy)
        with EpochLog(outputs.log, outputs.timings) as live:
            live.summary = fit(phases(config, trainer, decoder, on, store, captions, vocab), trainer, live)
            if chief:  # inside: a model that cannot be saved leaves the last run's log in place too
                save(outputs.model, on.saved, store.attrs, vocab, config.decoder, config.card())
    print(finished(live.summary, outputs.model if chief else None))
    return live.summary


def training_run(
    config: TrainConfig, model, store: FeatureFile, encoded: dict, strategy: tf.distribute.Strategy, images: Path
) -> contextlib.AbstractContextManager[TrainingRun]:
    """What ``model`` trains on: the ``store``'s cached features, or a fine-tuned encoder's activations (of the
    images in the folder ``images``)."""
    if config.finetune_from is None:
        return contextlib.nullcontext(frozen_run(model, config, store, encoded))
    from captioner import finetuning

    return finetuning.training_run(model, config, store, encoded, encoders.get(config.encoder), strategy, images)


def phases(
    config: TrainConfig,
    trainer: Trainer,
    decoder: Architecture,
    on: TrainingRun,
    store: FeatureFile,
    captions: Captions,
    vocab: Vocabulary,
) -> list[Phase]:
    """The ways of training, in order: teacher forcing, then self-critical training when ``config`` asks."""
    if not config.scores_dev:  # nothing decodes during training: no Stepper to trace
        return [TeacherForcing(trainer, on.batches, config)]
    stepper = Stepper(decoder)
    dev_scores = dev_scorer(stepper, on, captions["dev"], vocab)
    teacher_forcing = TeacherForcing(trainer, on.batches, config, dev_scores if config.selects else None)
    if not config.self_critical_epochs:
        return [teacher_forcing]
    _, rows, references = split_references(captions["train"], store.row_of)
    shape = store.shape(config.decoder.pooled(store.pooling))
    train_images = SampledImages(on.read, shape, rows, references, vocab)
    return [teacher_forcing, SelfCritical(trainer, stepper, train_images, config, dev_scores)]


def dev_scorer(stepper: Stepper, on: TrainingRun, dev: list, vocab: Vocabulary):
    """A function giving the greedy dev BLEU-4 and CIDEr-D of the model as it is when called."""
    _, rows, references = split_references(dev, on.dev_features.row_of)
    cider = metrics.CiderD(references)
    return functools.partial(
        decoding.greedy_scores, stepper, on.read, rows, references, vocab, vocab.max_length, cider=cider
    )


def finished(summary: dict, saved: Path | None) -> str:
    """The run's last console line: which epoch was kept, and where the model went."""
    best = f"best dev loss {summary['best_dev_loss']:.3f} at epoch {summary['best_epoch']}"
    if summary.get("self_critical_best_epoch"):
        best = f"kept self-critical epoch {summary['self_critical_best_epoch']} (teacher-forced: {best})"
    if saved is None:
        return f"train: a worker's share done ({best}); the chief saves the model"
    return f"train: {best}; saved {saved}/"


class TeacherForcing:
    """Teacher-forced epochs (a ``captioner.epochs.Phase``) as ``config`` says: the train step over the ``"train"``
    ``batches``, the dev loss over the ``"dev"`` ones, and with ``dev_scores`` (a function scoring the model as it is
    now, e.g. ``decoding.greedy_scores``; all its scores are logged) the greedy dev scores.

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
        self.dev_scores, self.metric = dev_scores, config.metric
        self.epochs, self.patience = config.epochs, config.patience
        self.lr_patience, self.lr_factor = config.lr_patience, config.lr_factor
        self.keep_margin = SCORE_MARGIN if dev_scores is not None else LOSS_MARGIN
        self.score_name = f"greedy dev {METRIC_NAMES[self.metric]}" if dev_scores is not None else "dev loss"
        self.dev_losses: list[float] = []

    def start(self, summary: dict) -> float:
        return -np.inf

    def run_epoch(self, epoch: int) -> Epoch:
        train = self.trainer.run_epoch(self.train, True, f"train: epoch {epoch}")
        dev = self.trainer.run_epoch(self.dev, False, "train: dev loss")
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


def seed_everything(seed: int) -> None:
    """Python, NumPy and TensorFlow seeded: with ``deterministic_ops``, the same metrics every run."""
    import keras

    keras.utils.set_random_seed(seed)


def deterministic_ops() -> None:
    """TensorFlow's ops deterministic from here on. Called once the inputs are ready, not before: under it tf.data
    runs the image loader (a ``py_function`` for the EXIF step) on one thread, and logs a spurious NodeDef error."""
    tf.config.experimental.enable_op_determinism()


def use_precision(name: str) -> None:
    """Models built from now on compute in ``name`` (one of ``captioner.config.PRECISIONS``), their variables
    float32.

    The architectures keep the vocabulary projection (hence the softmax) in float32, and ``Trainer`` scales the
    float16 loss against underflow; a saved model is float32 whatever trained it (``captioner.checkpoint.save``).
    """
    import keras

    keras.mixed_precision.set_global_policy(name)
