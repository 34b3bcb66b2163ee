"""The train stage's work, from a config to the saved model: ``train``.

How it flows: ``train`` creates the distribution strategy and sets the precision, seeds everything, reads the
vocabulary and the train and dev captions, and builds the decoder's architecture (``captioner.model.decoder``).
What it trains on is its run (a ``captioner.training.trainer.TrainingRun``, ``open_run``): the cached features,
or a fine-tuned encoder joined to the decoder. A ``captioner.training.trainer.Trainer`` holds the optimizers and
the compiled steps; ``phases`` lists the phases in order (teacher forcing, then self-critical training when
asked), and ``captioner.training.epochs.fit`` runs them epoch by epoch, keeping the best weights. The model and
its card (decoder spec and this config) go to the model directory of the project's ``captioner.layout.Layout``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import tensorflow as tf

from captioner.datasets import read_captions, split_references
from captioner.evaluation import metrics
from captioner.features import encoders
from captioner.features.extraction import FeatureFile
from captioner.layout import Layout, TrainingOutputs
from captioner.model import decoder, decoding
from captioner.model.checkpoint import save
from captioner.model.decoder import Architecture, Stepper
from captioner.params import check_feature_batch
from captioner.text import Vocabulary, initial_embeddings
from captioner.training import distribute
from captioner.training.batching import encode_split
from captioner.training.config import TrainConfig
from captioner.training.epochs import EpochLog, Phase, fit
from captioner.training.self_critical import SampledImages, SelfCritical
from captioner.training.teacher_forcing import TeacherForcing
from captioner.training.trainer import Trainer, TrainingRun, frozen_run

Captions = dict[str, list[tuple[str, list[str]]]]  # split → (image, tokens) pairs


def train(config: TrainConfig, layout: Layout, outputs: TrainingOutputs | None = None) -> dict:
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
        shape = store.shape(not config.decoder.reads_grid(store.pooling))
        check_feature_batch(config.batch_size, shape)
        encoded = {split: encode_split(split, pairs, store.row_of, vocab) for split, pairs in captions.items()}
        print(f"train: {strategy.num_replicas_in_sync} replica(s), {config.batch_size} captions per step in all")
        with strategy.scope():
            architecture = decoder.architecture(config.decoder, len(vocab))
            architecture.build(shape, embeddings)
        run = stack.enter_context(open_run(config, architecture, store, encoded, strategy, layout.images))
        deterministic_ops()
        with strategy.scope():
            trainer = Trainer(run.trained, architecture.head, config, strategy, policy_model(config, architecture, run))
        with EpochLog(outputs.log, outputs.timings) as live:
            live.summary = fit(phases(config, trainer, architecture, run, store, captions, vocab), trainer, live)
            if chief:  # inside: a model that cannot be saved leaves the last run's log in place too
                save(outputs.model, run.saved, store.attrs, vocab, config.decoder, config.card())
    print(finished(live.summary, outputs.model if chief else None))
    return live.summary


def open_run(
    config: TrainConfig,
    architecture: Architecture,
    store: FeatureFile,
    encoded: dict,
    strategy: tf.distribute.Strategy,
    images: Path,
) -> contextlib.AbstractContextManager[TrainingRun]:
    """What ``architecture.model`` trains on: the ``store``'s cached features (``frozen_run``; a grid decoder's
    captions grouped by image on one device), or a fine-tuned encoder's activations of the images in the folder
    ``images`` (``captioner.training.finetuning.finetuned_run``)."""
    if config.finetune_from is None:
        grouped = architecture.reads_grid and strategy.num_replicas_in_sync == 1
        return contextlib.nullcontext(frozen_run(architecture, config, store, encoded, grouped))
    from captioner.training import finetuning

    model, encoder = architecture.model, encoders.get(config.encoder)
    return finetuning.finetuned_run(model, config, store, encoded, encoder, strategy, images)


def phases(
    config: TrainConfig,
    trainer: Trainer,
    architecture: Architecture,
    run: TrainingRun,
    store: FeatureFile,
    captions: Captions,
    vocab: Vocabulary,
) -> list[Phase]:
    """The phases of training, in order: teacher forcing, then self-critical training when ``config`` asks."""
    if not config.scores_dev:  # nothing decodes during training: no Stepper to trace
        return [TeacherForcing(trainer, run.batches, config)]
    stepper = Stepper(architecture)
    dev_scores = dev_scorer(stepper, run, captions["dev"], vocab)
    selecting = config.selection_score is not None
    teacher_forcing = TeacherForcing(trainer, run.batches, config, dev_scores if selecting else None)
    if not config.self_critical_epochs:
        return [teacher_forcing]
    _, rows, references = split_references(captions["train"], store.row_of)
    shape = store.shape(not config.decoder.reads_grid(store.pooling))
    grouped = trainer.policy_model is not run.saved  # the image-grouped decoder of policy_model
    train_images = SampledImages(run.read, shape, rows, references, vocab, grouped)
    return [teacher_forcing, SelfCritical(trainer, stepper, train_images, config, dev_scores)]


def policy_model(config: TrainConfig, architecture: Architecture, run: TrainingRun):
    """What self-critical training's policy step trains: a grid decoder grouped by image (its
    ``self_critical_samples`` captions repeat the image's projections), else the decoder itself."""
    if config.self_critical_epochs and architecture.reads_grid:
        return architecture.build_grouped(tuple(run.saved.inputs[0].shape[1:]), config.self_critical_samples)
    return run.saved


def dev_scorer(stepper: Stepper, run: TrainingRun, dev: list, vocab: Vocabulary) -> Callable[[], dict[str, float]]:
    """A function giving the greedy dev scores of the model as it is when called: corpus BLEU-4 (``bleu4``) and
    CIDEr-D (``cider``, the mean over images), up to the vocabulary's caption length."""
    _, rows, references = split_references(dev, run.dev_features.row_of)
    cider = metrics.CiderD(references)  # its document frequencies, counted once (~0.5 s for 1,000 dev images)

    def scores() -> dict[str, float]:
        captions = [vocab.decode(ids) for ids in decoding.greedy(stepper, run.read, rows, vocab.max_length).ids]
        return {
            "bleu4": metrics.corpus_bleu(references, captions)["bleu4"],
            "cider": float(np.mean([cider.score(image, words) for image, words in enumerate(captions)])),
        }

    return scores


def finished(summary: dict, saved: Path | None) -> str:
    """The run's last console line: which epoch was kept, and where the model went."""
    best = f"best dev loss {summary['best_dev_loss']:.3f} at epoch {summary['best_epoch']}"
    if summary.get("self_critical_best_epoch"):
        best = f"kept self-critical epoch {summary['self_critical_best_epoch']} (teacher-forced: {best})"
    if saved is None:
        return f"train: a worker's share done ({best}); the chief saves the model"
    return f"train: {best}; saved {saved}/"


def seed_everything(seed: int) -> None:
    """Python, NumPy and TensorFlow seeded: with ``deterministic_ops``, the same metrics every run."""
    import keras

    keras.utils.set_random_seed(seed)


def deterministic_ops() -> None:
    """TensorFlow's ops deterministic from here on. Called once the inputs are ready, not before: under it tf.data
    runs the image loader (a ``py_function`` for the EXIF step) on one thread, and logs a spurious NodeDef error."""
    tf.config.experimental.enable_op_determinism()


def use_precision(name: str) -> None:
    """Models built from now on compute in ``name`` (one of ``captioner.training.config.PRECISIONS``), their variables
    float32.

    The architectures keep the vocabulary projection (hence the softmax) in float32, and ``Trainer`` scales the
    float16 loss against underflow; a saved model is float32 whatever trained it (``captioner.model.checkpoint.save``).
    """
    import keras

    keras.mixed_precision.set_global_policy(name)
