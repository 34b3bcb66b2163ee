"""Stage evaluate: greedy captions for the test images, corpus BLEU-1..4, and a readable captions file."""

import json

import keras

from captioner import decoding, metrics
from captioner.datasets import read_captions
from captioner.decoder import Stepper, architecture
from captioner.features import FeatureFile
from captioner.stage import Layout, Params, run, write_text
from captioner.text import Vocabulary, strip_special


def main(params: Params) -> None:
    settings = params["evaluate"]
    vocab = Vocabulary.load(Layout.vocab)
    model = keras.saving.load_model(Layout.model)
    with FeatureFile(Layout.features_file(params["encoder"]), params["encoder"]) as store:
        references: dict[str, list[list[str]]] = {}
        for image, tokens in read_captions(Layout.split_captions("test")):
            if image in store.row_of:
                references.setdefault(image, []).append(strip_special(tokens))
        images = list(references)
        generated = decoding.greedy(
            Stepper(model),
            store.reader(pooled=architecture(model)[1] != "attention"),
            [store.row_of[image] for image in images],
            vocab.start_id,
            vocab.end_id,
            settings["max_len"],
            settings["batch_size"],
        )
    hypotheses = [vocab.decode(ids) for ids in generated]
    scores = metrics.corpus_bleu([references[image] for image in images], hypotheses)
    write_text(Layout.scores, json.dumps({key: round(value, 4) for key, value in scores.items()}, indent=2) + "\n")
    rows = ["image\tgenerated\treferences\n"] + [
        f"{image}\t{' '.join(words)}\t{' | '.join(' '.join(ref) for ref in references[image])}\n"
        for image, words in zip(images, hypotheses, strict=True)
    ]
    write_text(Layout.test_captions, "".join(rows))
    print(f"evaluate: {len(images)} test images, " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))


if __name__ == "__main__":
    run(main)
