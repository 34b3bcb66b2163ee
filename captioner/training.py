"""Teacher-forced training under a tf.distribute strategy, paced and stopped by the dev loss."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from captioner import CaptionerError, boundary
from captioner.batching import CaptionBatches
from captioner.decoder import parts
from captioner.features import FeatureFile
from captioner.stage import atomic_path
from captioner.teacher_forcing import EpochStats, accumulate, attention_penalty, forced_outputs, forced_sums


@dataclass
class TrainingRun:
    """What training runs on: frozen cached features (``frozen_run``) or a fine-tuned encoder
    (``captioner.finetuning.training_run``)."""

    trained: object  # the model the optimizer steps: the decoder, or the unfrozen encoder layers joined to it
    saved: object  # what models/ holds: the decoder, or the whole encoder joined to it
    batches: dict[str, CaptionBatches]  # "train" and "dev"
    dev_features: FeatureFile  # the file whose rows ``read`` takes
    read: Callable[[np.ndarray], np.ndarray]  # rows → features as the decoder reads them now


def frozen_run(
    model, reads_grid: bool, cached: FeatureFile, encoded: dict[str, tuple[np.ndarray, list[list[int]]]],
    batch_size: int, seed: int,
) -> TrainingRun:  # fmt: skip
    """The decoder ``model`` trained on the ``cached`` features of each split's encoded captions; the train
    batches remixed every epoch from ``seed``, the dev batches in one fixed order."""
    read, shape = cached.reader(not reads_grid), cached.shape(not reads_grid)
    batches = {
        split: CaptionBatches(read, shape, rows, sequences, batch_size, seed if split == "train" else None)
        for split, (rows, sequences) in encoded.items()
    }
    return TrainingRun(model, model, batches, cached, read)


def seed_everything(seed: int) -> None:
    """Python, NumPy and TensorFlow seeded: with ``deterministic_ops``, the same metrics every run."""
    import keras

    keras.utils.set_random_seed(seed)


def deterministic_ops() -> None:
    """TensorFlow's ops deterministic from here on. Called once the inputs are ready, not before: under it tf.data
    runs the image loader (a ``py_function`` for the EXIF step) on one thread, and logs a spurious NodeDef error."""
    tf.config.experimental.enable_op_determinism()


STRATEGIES = ("auto", "mirrored", "multi_worker", "default")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")  # Keras dtype policies
LOSS_MARGIN = 1e-4  # a dev loss lower by less than this is no improvement (for the kept weights and the pacing)
SCORE_MARGIN = 1e-5  # a dev BLEU-4 or CIDEr-D higher by less than this is no improvement
# Which epoch's weights are kept: the lowest dev loss, or the best greedy dev BLEU-4 or CIDEr-D (scored every
# epoch); the dev loss paces training either way.
SELECT_BY = ("dev_loss", "dev_bleu4", "dev_cider")
METRIC_NAMES = {"bleu4": "BLEU-4", "cider": "CIDEr-D"}  # as printed
# DVCLive's folder of the curves a run may or may not log (dev scores, the reward, the encoder's learning rate),
# beside the learning rate it always logs: dvc.yaml plots each file in it, so an unlogged one is no empty plot.
BY_EPOCH = "by_epoch"


def shown(scores: dict[str, float]) -> str:
    """Greedy dev scores as an epoch's console line shows them (nothing when none were scored)."""
    return "".join(f", dev {METRIC_NAMES[metric]} {score:.4f}" for metric, score in scores.items())


def strategy_named(name: str) -> tf.distribute.Strategy:
    """``auto``: mirrored over all local GPUs when there are two or more, else the default (one device).

    ``mirrored`` always mirrors (over every GPU, or the CPU when there is none); ``default`` never does.
    ``multi_worker``: one model trained by every machine of the cluster ``TF_CONFIG`` describes, each
    mirroring over its GPUs (or its CPU); create it before any other TensorFlow work.
    """
    if name == "auto":
        name = "mirrored" if len(tf.config.list_logical_devices("GPU")) > 1 else "default"
    if name == "multi_worker":
        task, index, machines = cluster_task(os.environ.get("TF_CONFIG"))
        seconds = _cluster_timeout()
        print(
            f"train: {task} {index} of {machines} machines (TF_CONFIG); waiting for the others, {seconds:g} s at most"
        )
        late = (
            f"the cluster of TF_CONFIG did not assemble within {seconds:g} s; start every worker it lists "
            f"(README: More machines), or wait longer with {CLUSTER_TIMEOUT}"
        )
        with deadline(seconds, late):
            return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.MirroredStrategy() if name == "mirrored" else tf.distribute.get_strategy()


CLUSTER_TIMEOUT = "CAPTIONER_CLUSTER_TIMEOUT"  # seconds multi-worker training waits for its cluster (600)
ADDRESS = re.compile(r"[^\s:]+:\d{1,5}")  # host:port in TF_CONFIG


def _cluster_timeout() -> float:
    text = os.environ.get(CLUSTER_TIMEOUT, "600")
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):  # nan too
        raise CaptionerError(f"{CLUSTER_TIMEOUT} is {text!r}; it must be a number of seconds > 0")
    return seconds


def cluster_task(config: str | None) -> tuple[str, int, int]:
    """(task type, task index, machines) of a ``TF_CONFIG``, checked: a CaptionerError naming what is wrong with it,
    before TensorFlow would wait for a cluster that cannot assemble."""
    try:
        parsed = json.loads(config or "")
        cluster, task = boundary.field(parsed, "cluster", dict), boundary.field(parsed, "task", dict)
        kind, index = boundary.field(task, "type", str, "task"), boundary.field(task, "index", int, "task")
        for job, addresses in cluster.items():
            if not isinstance(addresses, list) or not all(ADDRESS.fullmatch(str(a)) for a in addresses):
                raise CaptionerError(f"cluster.{job} is {boundary.shown(addresses)}; it must list host:port addresses")
    except (json.JSONDecodeError, TypeError) as err:
        raise CaptionerError(f"TF_CONFIG is not JSON ({err}); README: More machines shows one") from None
    except CaptionerError as err:
        raise CaptionerError(f"TF_CONFIG: {err}") from None
    if kind not in cluster or not 0 <= index < len(cluster[kind]):
        raise CaptionerError(f"TF_CONFIG: task {kind} {index} is not in its cluster ({boundary.shown(cluster)})")
    return kind, index, sum(len(addresses) for addresses in cluster.values())


@contextlib.contextmanager
def deadline(seconds: float, message: str) -> Iterator[None]:
    """Exit the process with ``error: <message>`` unless the block ends within ``seconds``: for a wait inside
    TensorFlow that no exception can interrupt."""

    def give_up() -> None:
        print(f"error: {message}", file=sys.stderr, flush=True)
        os._exit(1)

    timer = threading.Timer(seconds, give_up)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the outputs: always, except on the non-chief workers of a cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "chief" or (not has_chief and resolver.task_type == "worker" and resolver.task_id == 0)


def use_precision(name: str) -> None:
    """Models built from now on compute in ``name`` (one of ``PRECISIONS``), their variables float32.

    ``captioner.decoder.build`` keeps the vocabulary projection (hence the softmax) in float32, and
    ``Trainer`` scales the float16 loss against underflow; a saved model is float32 whatever trained it
    (``captioner.captioning.save``).
    """
    import keras

    keras.mixed_precision.set_global_policy(name)


class Trainer:
    """Compiled train and dev steps for a model from ``captioner.decoder.build``, under a tf.distribute strategy.

    Build the model inside ``strategy.scope()``. Each global batch is split across the replicas;
    every replica normalises its summed loss by the real tokens of the *whole* batch, so the
    gradients the optimizer all-reduces (sums) equal those of one device on the same batch.
    ``clipnorm`` clips each replica's share before that sum.
    """

    def __init__(
        self,
        model,
        learning_rate: float,
        clipnorm: float,
        attention_reg: float = 0.0,
        strategy: tf.distribute.Strategy | None = None,
        encoder_lr: float | None = None,
    ):
        import keras

        self.model = model
        self.strategy = strategy or tf.distribute.get_strategy()
        encoder, _ = parts(model)
        # A fine-tuned encoder gets its own, smaller learning rate: one Adam per group of variables.
        encoder_ids = {id(v) for v in encoder.trainable_variables} if encoder is not None else set()
        groups = [[v for v in model.trainable_variables if id(v) not in encoder_ids]]
        rates = [learning_rate]
        if encoder_ids:
            groups.append([v for v in model.trainable_variables if id(v) in encoder_ids])
            rates.append(encoder_lr if encoder_lr is not None else learning_rate)
        # float16 gradients underflow: its losses are scaled up (dynamically) before the backward pass.
        scaled = keras.mixed_precision.global_policy().compute_dtype == "float16"
        with self.strategy.scope():
            self.optimizers = [keras.optimizers.Adam(learning_rate=rate, clipnorm=clipnorm) for rate in rates]
            if scaled:
                self.optimizers = [keras.optimizers.LossScaleOptimizer(optimizer) for optimizer in self.optimizers]
            for optimizer, variables in zip(self.optimizers, groups, strict=True):
                optimizer.build(variables)
        replicas = self.strategy.num_replicas_in_sync

        def tape():
            # Each optimizer scales the loss its own way: one backward pass per group then.
            return tf.GradientTape(persistent=scaled and len(groups) > 1)

        def descend(tape, loss):
            if scaled:
                gradients = [tape.gradient(loss[i], group) for i, group in enumerate(groups)]
            else:
                gradients = tape.gradient(loss, groups)
            for optimizer, variables, group_gradients in zip(self.optimizers, groups, gradients, strict=True):
                optimizer.apply_gradients(zip(group_gradients, variables, strict=True))

        def scale(loss):
            return [optimizer.scale_loss(loss) for optimizer in self.optimizers] if scaled else loss

        def whole_batch(count):
            return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, count)

        def train_replica(features, tokens):
            with tape() as recorded:
                outputs, (loss_sum, correct, count) = forced_outputs(model, features, tokens, training=True)
                loss = loss_sum / whole_batch(count)
                if attention_reg and "attention" in outputs:
                    loss += attention_reg * attention_penalty(tokens[:, 1:], outputs["attention"]) / replicas
                loss = scale(loss)
            descend(recorded, loss)
            return loss_sum, correct, count

        def policy_replica(features, tokens, advantages):
            # No dropout: the gradient must be that of the policy the captions were sampled from.
            with tape() as recorded:
                _, (loss_sum, correct, count) = forced_outputs(model, features, tokens, weights=advantages)
                loss = scale(loss_sum / whole_batch(count))
            descend(recorded, loss)
            return loss_sum, correct, count

        self._replica_steps = {
            "train": train_replica,
            "dev": functools.partial(forced_sums, model),
            "policy": policy_replica,
        }
        self._compiled = {}

    def restart(self, learning_rate: float) -> None:
        """Every optimizer afresh (no step count, zero moments) at ``learning_rate``: for a new loss whose
        gradients the old moments do not describe."""
        for optimizer in self.optimizers:
            for variable in optimizer.variables:
                variable.assign(tf.zeros_like(variable))
            optimizer.learning_rate.assign(learning_rate)

    def step_for(self, name: str, element_spec):
        """The compiled ``"train"``, ``"dev"`` or ``"policy"`` step for batches of ``element_spec``:
        (features, tokens[, advantages]) → summed (loss, correct tokens, real tokens). Compiled once per
        mode; the spec's None dimensions keep per-batch sizes from retracing.

        ``"policy"`` is self-critical training's step: it descends the advantage-weighted cross-entropy
        of sampled captions, without dropout.
        """
        if name not in self._compiled:
            replica_step = self._replica_steps[name]

            @tf.function(input_signature=element_spec)
            def step(*batch):
                sums = self.strategy.run(replica_step, args=batch)
                return [self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None) for value in sums]

            self._compiled[name] = step
        return self._compiled[name]

    def run_epoch(self, batches: CaptionBatches, step: str, description: str) -> EpochStats:
        """One pass of the ``"train"`` or ``"dev"`` step over ``batches``."""
        if self.strategy.num_replicas_in_sync == 1:
            return accumulate(self.step_for(step, batches.element_spec), batches, description)
        distributed = self.strategy.distribute_datasets_from_function(batches.replica_dataset)
        return accumulate(self.step_for(step, distributed.element_spec), distributed, description)

    def fit(
        self,
        train: CaptionBatches,
        dev: CaptionBatches,
        epochs: int,
        patience: int,
        live,
        lr_patience: int | None = None,
        lr_factor: float = 0.5,
        dev_scores: Callable[[], dict[str, float]] | None = None,
        metric: str = "bleu4",
    ) -> dict:
        """Train until ``epochs``, or ``patience`` epochs without a lower dev loss; restore the best weights.

        After ``lr_patience`` epochs without a lower dev loss the learning rate is multiplied by
        ``lr_factor``. The best weights are those of the lowest dev loss, or with ``dev_scores`` (a
        function scoring the model as it is now, e.g. ``decoding.greedy_scores``; all its scores are logged)
        of the best ``metric``: the metric users read, not its proxy. That score only picks the epoch. It jumps too much
        from epoch to epoch to pace training: on Flickr8k, LR drops and stops that followed it halved the
        rate while the loss still fell fast, and stopped training while it still did.
        """
        monitor = f"dev_{metric}" if dev_scores is not None else "dev_loss"
        # The score that keeps weights: the dev score, or the dev loss (negated, so higher is better).
        kept = KeepBest(self.model, SCORE_MARGIN if dev_scores is not None else LOSS_MARGIN)
        best_loss, lowest_loss, lowest_epoch, last_change = np.inf, np.inf, 0, 0
        for epoch in range(1, epochs + 1):
            started = time.perf_counter()
            train_stats = self.run_epoch(train, "train", f"train: epoch {epoch}")
            dev_stats = self.run_epoch(dev, "dev", "train: dev loss")
            scores = dev_scores() if dev_scores is not None else {}
            seconds = time.perf_counter() - started
            rates = [float(optimizer.learning_rate.numpy()) for optimizer in self.optimizers]
            self.log_epoch(live, epoch, {"train": train_stats, "dev": dev_stats}, scores, rates, seconds)
            print(
                f"train: epoch {epoch}: loss {train_stats.loss:.3f}, dev loss {dev_stats.loss:.3f}{shown(scores)}, "
                f"dev token accuracy {dev_stats.accuracy:.3f}, lr {rates[0]:.2g} ({seconds:.1f}s)"
            )
            if kept.offer(epoch, scores[metric] if scores else -dev_stats.loss):
                best_loss = dev_stats.loss
            if dev_stats.loss < lowest_loss - LOSS_MARGIN:
                lowest_loss, lowest_epoch, last_change = dev_stats.loss, epoch, epoch
            elif epoch - lowest_epoch >= patience:
                print(
                    f"train: stopping early, no lower dev loss than {lowest_loss:.4f} (epoch {lowest_epoch}) "
                    f"for {patience} epochs; best {monitor} {abs(kept.score):.4f} at epoch {kept.epoch}"
                )
                break
            elif lr_patience and epoch - last_change >= lr_patience:
                for optimizer, rate in zip(self.optimizers, rates, strict=True):
                    optimizer.learning_rate.assign(rate * lr_factor)
                last_change = epoch
        kept.restore()
        if dev_scores is not None and kept.unmoved:
            print(
                f"train: warning: the greedy dev {METRIC_NAMES[metric]} was {kept.score:.4f} in every epoch, so it "
                f"chose nothing (epoch {kept.epoch} kept); a larger dev split, or train.select_by dev_loss, says more"
            )
        summary = {"best_epoch": kept.epoch, "best_dev_loss": float(best_loss), "epochs_run": epoch}
        return summary | ({f"best_dev_{metric}": float(kept.score)} if dev_scores is not None else {})

    def log_epoch(
        self, live, epoch: int, stats: dict[str, EpochStats], scores: dict[str, float], rates: list[float],
        seconds: float,
    ) -> None:  # fmt: skip
        """One epoch's values into the training log (see ``EpochLog``)."""
        for split, split_stats in stats.items():
            if not np.isfinite(split_stats.loss):
                # NaN compares false, so no epoch would beat the start: the untrained weights would be kept.
                raise CaptionerError(
                    f"the {split} loss is {split_stats.loss} at epoch {epoch}: training diverged or the {split} "
                    "batches are empty; no model saved (a lower train.learning_rate may help)"
                )
            live.log_metric(f"{split}/loss", round(split_stats.loss, 4))
            live.log_metric(f"{split}/token_accuracy", round(split_stats.accuracy, 4))
        for metric, score in scores.items():
            live.log_metric(f"{BY_EPOCH}/dev_{metric}", round(score, 4))
        live.log_metric(f"{BY_EPOCH}/learning_rate", float(f"{rates[0]:.3g}"))
        if len(rates) > 1:
            live.log_metric(f"{BY_EPOCH}/encoder_learning_rate", float(f"{rates[1]:.3g}"))
        live.log_metric("epoch_seconds", round(seconds, 1))
        live.next_step()


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


class KeepBest:
    """The weights of ``model`` at its best score so far (higher is better; better by more than ``margin``),
    starting from the weights it has now: the one keep-best rule of teacher-forced and self-critical training."""

    def __init__(self, model, margin: float, score: float = -np.inf):
        self.model, self.margin = model, margin
        self.score, self.epoch, self.weights = score, 0, model.get_weights()
        self.offered: list[float] = []

    @property
    def unmoved(self) -> bool:
        """Whether two or more epochs were offered and their scores never moved beyond the margin."""
        return len(self.offered) > 1 and max(self.offered) - min(self.offered) <= self.margin

    def offer(self, epoch: int, score: float) -> bool:
        """Keep the model's weights if ``score`` beats the best; whether it did."""
        self.offered.append(score)
        if score > self.score + self.margin:
            self.score, self.epoch, self.weights = score, epoch, self.model.get_weights()
            return True
        return False

    def restore(self) -> None:
        self.model.set_weights(self.weights)
