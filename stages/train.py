"""Stage train: fit the decoder on the train captions with early stopping on dev; save it under models/."""

import keras
import tensorflow as tf
from dvclive import Live

from captioner import decoder, training
from captioner.datasets import read_captions
from captioner.features import pooled_for_captions
from captioner.stage import Layout, Params, atomic_path, choice, run
from captioner.text import Vocabulary


def main(params: Params) -> None:
    settings, architecture = params["train"], params["decoder"]
    choice(architecture["rnn"], decoder.RNNS, "decoder.rnn")
    keras.utils.set_random_seed(settings["seed"])
    tf.config.experimental.enable_op_determinism()

    vocab = Vocabulary.load(Layout.vocab)
    captions = {split: read_captions(Layout.split_captions(split)) for split in ("train", "dev")}
    features, row_of = pooled_for_captions(
        Layout.features_file(params["encoder"]), params["encoder"], captions["train"] + captions["dev"]
    )
    batches = {}
    for split, shuffle_seed in (("train", settings["seed"]), ("dev", None)):
        rows, sequences, dropped = training.encode_captions(captions[split], row_of, vocab)
        print(f"train: {split}: {len(rows)} captions ({dropped} dropped: too long or image unreadable)")
        batches[split] = training.batches(features, rows, sequences, settings["batch_size"], seed=shuffle_seed)

    model = decoder.build(len(vocab), features.shape[1], **architecture)
    trainer = training.Trainer(model, settings["learning_rate"], settings["clipnorm"])
    with Live(dir=str(Layout.train_log), save_dvc_exp=False, dvcyaml=False, report=None) as live:
        summary = trainer.fit(batches["train"], batches["dev"], settings["epochs"], settings["patience"], live)
        live.summary.update(summary)
    with atomic_path(Layout.model) as temporary:
        model.save(temporary)
    print(f"train: best dev loss {summary['best_dev_loss']:.3f} at epoch {summary['best_epoch']}; saved {Layout.model}")


if __name__ == "__main__":
    run(main)
