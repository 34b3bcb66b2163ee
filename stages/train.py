"""Stage train: fit the decoder on the train captions with early stopping on dev; save it under models/."""

from captioner.stage import size_thread_pools

size_thread_pools("train")  # before TensorFlow starts: it sizes its thread pools once

import functools
from contextlib import ExitStack
from pathlib import Path
from tempfile import TemporaryDirectory

from captioner import captioning, decoding, encoders, ensemble, finetuning, metrics, self_critical, training
from captioner.batching import encode_split
from captioner.datasets import read_captions, split_references
from captioner.decoder import DecoderSpec, Stepper, build
from captioner.features import FeatureFile
from captioner.stage import Layout, Params, member_settings, run
from captioner.text import Vocabulary, initial_embeddings


def main(params: Params) -> None:
    member, decoder, settings = member_settings(params)  # the main model, or an ensemble member
    spec = DecoderSpec.from_params(decoder)
    models, log, timings = Layout.models, Layout.train_log, Layout.timings
    if member is not None:  # its model in ensemble/<name>/; its curves beside the timings, outside git
        models, log = ensemble.FOLDER / member, Path("logs") / "ensemble" / member
        timings = log / "epochs.tsv"
    strategy = training.strategy_named(settings["strategy"])
    training.use_precision(settings["precision"])
    if settings["self_critical_epochs"]:  # checked now, not after the teacher-forced epochs
        self_critical.SelfCritical.check_supported(settings["finetune_from"], strategy)
    training.seed_everything(settings["seed"])
    vocab = Vocabulary.load(Layout.vocab)
    embeddings = initial_embeddings(decoder["embeddings"], spec.embedding_dim, vocab, settings["seed"])
    captions = {split: read_captions(Layout.split_captions(split)) for split in ("train", "dev")}
    with FeatureFile(Layout.features_file(params["encoder"]), params["encoder"]) as store, ExitStack() as stack:
        # On a cluster every worker trains; the chief alone writes the outputs, the others log to scratch.
        chief = training.is_chief(strategy)
        if not chief:
            log = Path(stack.enter_context(TemporaryDirectory()))
            timings = log / "epochs.tsv"
        encoded = {split: encode_split(split, pairs, store.row_of, vocab) for split, pairs in captions.items()}
        print(f"train: {strategy.num_replicas_in_sync} replica(s), {settings['batch_size']} captions per step in all")
        with strategy.scope():
            model = build(len(vocab), store.shape(not spec.reads_grid), spec, embeddings)
        if settings["finetune_from"] is None:
            on = training.frozen_run(model, spec.reads_grid, store, encoded, settings["batch_size"], settings["seed"])
        else:
            on = stack.enter_context(finetuning.training_run(
                model, spec, store, encoded, encoders.get(params["encoder"]), Layout.images,
                settings["finetune_from"], settings["batch_size"], settings["seed"], strategy,
            ))  # fmt: skip
        training.deterministic_ops()
        with strategy.scope():
            trainer = training.Trainer(
                on.trained, settings["learning_rate"], settings["clipnorm"], decoder["attention_reg"],
                strategy, settings["encoder_lr"],
            )  # fmt: skip
        _, dev_rows, dev_references = split_references(captions["dev"], on.dev_features.row_of)
        # The greedy dev score that keeps an epoch's weights; self-critical epochs need one even under dev_loss.
        metric = "cider" if settings["select_by"] == "dev_cider" else "bleu4"
        selects = settings["select_by"] != "dev_loss"  # a dev score keeps the teacher-forced epoch's weights
        dev_scores = functools.partial(
            decoding.greedy_scores, Stepper(model, spec), on.read, dev_rows, dev_references, vocab, vocab.max_length,
            cider=metrics.CiderD(dev_references),
        ) if selects or settings["self_critical_epochs"] else None  # fmt: skip
        with training.EpochLog(log, timings) as live:
            summary = trainer.fit(
                on.batches["train"], on.batches["dev"], settings["epochs"], settings["patience"], live,
                settings["lr_patience"], settings["lr_factor"],
                dev_scores if selects else None, metric,
            )  # fmt: skip
            if settings["self_critical_epochs"]:
                kept = f"best_dev_{metric}"
                start_score = summary[kept] if kept in summary else dev_scores()[metric]
                summary |= self_critical.after_teacher_forcing(
                    trainer, spec, on.read, store, captions["train"], vocab, settings, live, dev_scores, start_score,
                    metric,
                )  # fmt: skip
            live.summary = summary  # the tracked metrics: what describes the model, not the machine
        if not chief:
            print("train: a worker's share done; the chief saves the model")
            return
        captioning.save(models, on.saved, store.attrs, vocab, spec, finetune_from=settings["finetune_from"],
                        dataset=params["dataset"])  # fmt: skip
    best = f"best dev loss {summary['best_dev_loss']:.3f} at epoch {summary['best_epoch']}"
    if summary.get("self_critical_best_epoch"):
        best = f"kept self-critical epoch {summary['self_critical_best_epoch']} (teacher-forced: {best})"
    print(f"train: {best}; saved {models}/")


if __name__ == "__main__":
    run(main)
