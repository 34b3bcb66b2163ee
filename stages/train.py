"""Stage train: fit the decoder on the train captions with early stopping on dev; save it under models/."""

import keras
import tensorflow as tf
from dvclive import Live

from captioner import decoder, text, training
from captioner.captioning import write_card
from captioner.datasets import read_captions
from captioner.features import FeatureFile
from captioner.stage import Layout, Params, StageError, atomic_path, choice, run
from captioner.text import Vocabulary


def main(params: Params) -> None:
    settings, spec = params["train"], params["decoder"]
    choice(spec["rnn"], decoder.RNNS, "decoder.rnn")
    choice(spec["arch"], decoder.ARCHS, "decoder.arch")
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

    with FeatureFile(Layout.features_file(params["encoder"]), params["encoder"]) as store:
        pooled = spec["arch"] != "attention"
        feature_shape, read = store.shape(pooled), store.reader(pooled)
        batches = {}
        for split, shuffle_seed in (("train", settings["seed"]), ("dev", None)):
            rows, sequences, dropped = training.encode_captions(
                read_captions(Layout.split_captions(split)), store.row_of, vocab
            )
            print(f"train: {split}: {len(rows)} captions ({dropped} dropped: too long or image unreadable)")
            batches[split] = training.batches(
                read, feature_shape, rows, sequences, settings["batch_size"], shuffle_seed
            )

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
        trainer = training.Trainer(model, settings["learning_rate"], settings["clipnorm"], spec["attention_reg"])
        with Live(dir=str(Layout.train_log), save_dvc_exp=False, dvcyaml=False, report=None) as live:
            summary = trainer.fit(
                batches["train"],
                batches["dev"],
                settings["epochs"],
                settings["patience"],
                live,
                lr_patience=settings["lr_patience"],
                lr_factor=settings["lr_factor"],
            )
            live.summary.update(summary)
        with atomic_path(Layout.models) as directory:
            directory.mkdir()
            model.save(directory / Layout.model.name)
            write_card(directory, store.attrs, vocab)
    best = f"best dev loss {summary['best_dev_loss']:.3f} at epoch {summary['best_epoch']}"
    print(f"train: {best}; saved {Layout.models}/")


if __name__ == "__main__":
    run(main)
