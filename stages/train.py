"""Stage train: fit the decoder on the train captions with early stopping on dev; save it under models/."""

from collections.abc import Callable
from contextlib import ExitStack

import keras
import numpy as np
import tensorflow as tf
from dvclive import Live

from captioner import decoder, decoding, encoders, finetuning, text, training
from captioner.captioning import write_card
from captioner.datasets import read_captions
from captioner.features import FeatureFile
from captioner.self_critical import SelfCritical
from captioner.stage import Layout, Params, StageError, atomic_path, choice, run
from captioner.text import Vocabulary, references_by_image


def main(params: Params) -> None:
    settings, spec = params["train"], params["decoder"]
    choice(spec["rnn"], decoder.RNNS, "decoder.rnn")
    choice(spec["arch"], decoder.ARCHS, "decoder.arch")
    choice(settings["select_by"], training.SELECT_BY, "train.select_by")
    strategy = training.strategy_named(choice(settings["strategy"], training.STRATEGIES, "train.strategy"))
    if settings["self_critical_epochs"]:
        check_self_critical(settings, strategy)  # now, not after the teacher-forced epochs
    keras.utils.set_random_seed(settings["seed"])
    tf.config.experimental.enable_op_determinism()

    vocab = Vocabulary.load(Layout.vocab)
    embeddings = None
    if spec["embeddings"] != "learned":
        embeddings, missing = text.load_glove(spec["embeddings"], vocab, seed=settings["seed"])
        if embeddings.shape[1] != spec["embedding_dim"]:
            raise StageError(
                f"{spec['embeddings']} holds {embeddings.shape[1]}-d vectors; set decoder.embedding_dim to match"
            )
        print(f"train: GloVe vectors for {len(vocab.words) - missing} words, {missing} initialised randomly")

    finetune_from = settings["finetune_from"]
    with FeatureFile(Layout.features_file(params["encoder"]), params["encoder"]) as store, ExitStack() as stack:
        pooled = spec["arch"] != "attention"
        feature_shape = store.shape(pooled)
        encoded = {}
        for split in ("train", "dev"):
            rows, sequences, dropped = training.encode_captions(
                read_captions(Layout.split_captions(split)), store.row_of, vocab
            )
            encoded[split] = rows, sequences
            print(f"train: {split}: {len(rows)} captions ({dropped} dropped: too long or image unreadable)")
            if not len(rows):
                raise StageError(
                    f"no {split} caption is usable ({dropped} longer than the vocabulary's "
                    f"{vocab.max_length} tokens or of images without features); nothing saved"
                )
        seeds, batch_size = {"train": settings["seed"], "dev": None}, settings["batch_size"]

        print(f"train: {strategy.num_replicas_in_sync} replica(s), {settings['batch_size']} captions per step in all")
        with strategy.scope():
            model = decoder.build(
                len(vocab),
                feature_shape,
                rnn=spec["rnn"],
                arch=spec["arch"],
                units=spec["units"],
                embedding_dim=spec["embedding_dim"],
                dropout=spec["dropout"],
                attention_units=spec["attention_units"],
                embeddings=embeddings,
                train_embeddings=spec["train_embeddings"],
            )
        if finetune_from is None:
            read = store.reader(pooled)
            trained, saved, dev_features = model, model, (store, read)
            batches = {
                split: training.CaptionBatches(read, feature_shape, rows, sequences, batch_size, seeds[split])
                for split, (rows, sequences) in encoded.items()
            }
        else:
            # Fine-tuning reads the images themselves, at the size and with the weights the cache was made with.
            encoder = encoders.get(params["encoder"])
            with strategy.scope():
                split_encoder = finetuning.finetunable_encoder(
                    encoder, str(store.attrs["weights_param"]), int(store.attrs["input_size"]),
                    "avg" if pooled else "grid", finetune_from,
                )  # fmt: skip
            print(f"train: fine-tuning {encoder.name} from layer {finetune_from}")
            image_rows = [row for rows, _ in encoded.values() for row in rows]
            activations = stack.enter_context(
                finetuning.frozen_activations(split_encoder, store, encoder, Layout.images, image_rows, batch_size)
            )
            batches, per_image = finetuning.image_caption_batches(encoded, store, activations, batch_size, seeds)
            with strategy.scope():
                trained = finetuning.joint_model(split_encoder.trainable, model, per_image)
            saved = finetuning.joint_model(split_encoder.full, model, per_image)
            dev_features = activations, finetuning.features_reader(split_encoder.trainable, activations)

        with strategy.scope():
            trainer = training.Trainer(
                trained,
                settings["learning_rate"],
                settings["clipnorm"],
                spec["attention_reg"],
                strategy,
                encoder_lr=settings["encoder_lr"],
            )
        dev_bleu4 = None
        if settings["select_by"] == "dev_bleu4":
            dev_bleu4 = greedy_dev_bleu4(model, *dev_features, vocab)
        with Live(dir=str(Layout.train_log), save_dvc_exp=False, dvcyaml=False, report=None) as live:
            summary = trainer.fit(
                batches["train"],
                batches["dev"],
                settings["epochs"],
                settings["patience"],
                live,
                lr_patience=settings["lr_patience"],
                lr_factor=settings["lr_factor"],
                dev_bleu4=dev_bleu4,
            )
            if settings["self_critical_epochs"]:
                dev_bleu4 = dev_bleu4 or greedy_dev_bleu4(model, store, read, vocab)
                start_bleu4 = summary["best_dev_bleu4"] if "best_dev_bleu4" in summary else dev_bleu4()
                summary |= self_critical(trainer, store, read, feature_shape, vocab, settings).fit(
                    settings["self_critical_epochs"], settings["patience"], settings["self_critical_lr"],
                    live, dev_bleu4, start_bleu4,
                )  # fmt: skip
            live.summary.update({key: round(value, 4) for key, value in summary.items()})
        with atomic_path(Layout.models) as directory:
            directory.mkdir()
            saved.save(directory / Layout.model.name)
            write_card(directory, store.attrs, vocab, finetune_from)
    best = f"best dev loss {summary['best_dev_loss']:.3f} at epoch {summary['best_epoch']}"
    if summary.get("self_critical_best_epoch"):
        best = f"kept self-critical epoch {summary['self_critical_best_epoch']} (teacher-forced: {best})"
    print(f"train: {best}; saved {Layout.models}/")


def check_self_critical(settings: dict, strategy: tf.distribute.Strategy) -> None:
    if settings["finetune_from"] is not None:
        raise StageError("train.self_critical_epochs needs a frozen encoder: set train.finetune_from to null")
    if strategy.num_replicas_in_sync > 1:
        raise StageError("train.self_critical_epochs runs on one device: set train.strategy to default")


def self_critical(
    trainer: training.Trainer,
    features: FeatureFile,
    read: Callable[[np.ndarray], np.ndarray],
    feature_shape: tuple[int, ...],
    vocab: Vocabulary,
    settings: dict,
) -> SelfCritical:
    """Self-critical training on the train images, rewarded against all their references."""
    references = references_by_image(read_captions(Layout.split_captions("train")), features.row_of)
    rows = np.array([features.row_of[image] for image in references])
    samples = settings["self_critical_samples"]
    print(f"train: self-critical training on {len(rows)} images, {samples} sampled captions each")
    return SelfCritical(
        trainer, read, feature_shape, rows, list(references.values()), vocab,
        samples, max(1, settings["batch_size"] // samples), settings["seed"],
    )  # fmt: skip


def greedy_dev_bleu4(
    decoder_model: keras.Model, features: FeatureFile, read: Callable[[np.ndarray], np.ndarray], vocab: Vocabulary
) -> Callable[[], float]:
    """A function scoring ``decoder_model`` as it is now: greedy BLEU-4 on the dev images, whose features
    ``read`` gives by their rows in ``features`` (computed anew each time while the encoder is fine-tuned)."""
    references = references_by_image(read_captions(Layout.split_captions("dev")), features.row_of)
    rows = np.array([features.row_of[image] for image in references])
    stepper = decoder.Stepper(decoder_model)
    return lambda: decoding.greedy_bleu4(stepper, read, rows, list(references.values()), vocab, vocab.max_length)


if __name__ == "__main__":
    run(main)
