"""Stage evaluate: captions for the test images, the standard caption metrics, figures, a readable captions file."""

import contextlib
import json

import numpy as np

from captioner import decoding, encoders, figures, finetuning, metrics, training
from captioner.captioning import load_trained
from captioner.datasets import read_captions
from captioner.decoder import Stepper, architecture
from captioner.features import FeatureFile
from captioner.stage import Layout, Params, StageError, run, write_text
from captioner.text import Vocabulary, references_by_image, strip_special

SAMPLE_IMAGES, ATTENTION_IMAGES = 12, 3


def main(params: Params) -> None:
    settings = params["evaluate"]
    vocab = Vocabulary.load(Layout.vocab)
    test = read_captions(Layout.split_captions("test"))
    with contextlib.ExitStack() as stack:
        cached = stack.enter_context(FeatureFile(Layout.features_file(params["encoder"]), params["encoder"]))
        references = references_by_image(test, cached.row_of)
        images = list(references)
        if not images:
            raise StageError(f"no test image has both captions and features in {cached.path}; nothing to score")
        card, encoder_model, model = load_trained(Layout.models)
        finetune_from = card.get("finetune_from")  # cards before fine-tuning lack it
        stepper, pooled = Stepper(model), architecture(model)[1] != "attention"
        store = stack.enter_context(
            finetuning.features_seen_by(
                encoder_model,
                cached,
                encoders.get(params["encoder"]),
                [Layout.images / image for image in images],
                settings["batch_size"],
            )
        )
        read = store.reader(pooled)
        rows = np.array([store.row_of[image] for image in images])
        decode = (vocab.start_id, vocab.end_id, settings["max_len"])
        if settings["beam_size"] > 1:
            generated, _ = decoding.beam_search(
                stepper, read, rows, *decode, settings["beam_size"], settings["length_penalty"]
            )
        else:
            generated = decoding.greedy(stepper, read, rows, *decode, settings["batch_size"])
        test_rows, sequences, _ = training.encode_captions(test, store.row_of, vocab)
        forced = training.teacher_forced(
            model, training.CaptionBatches(read, store.shape(pooled), test_rows, sequences, settings["batch_size"])
        )
        attention: list = []
        attended = (
            [] if pooled else decoding.greedy(stepper, read, rows[:ATTENTION_IMAGES], *decode, attention=attention)
        )

    hypotheses = [vocab.decode(ids) for ids in generated]
    refs = [references[image] for image in images]
    embeddings = model.get_layer("embedding").get_weights()[0]  # the space of the cosine similarity
    train_captions = {" ".join(strip_special(tokens)) for _, tokens in read_captions(Layout.split_captions("train"))}
    text_scores, cosines, notes = metrics.caption_scores(refs, hypotheses, embeddings, vocab.ids, train_captions)
    scores = {
        **text_scores,
        "perplexity": forced.perplexity,
        "token_accuracy": forced.accuracy,
        "test_images": len(images),
        "finetune_from": finetune_from,
        "beam_size": settings["beam_size"],
        "length_penalty": settings["length_penalty"],
        "max_len": settings["max_len"],
    }
    rounded = {key: round(value, 4) if isinstance(value, float) else value for key, value in scores.items()}
    write_text(Layout.scores, json.dumps(rounded, indent=2) + "\n")
    rows_text = ["image\tgenerated\treferences\n"] + [
        f"{image}\t{' '.join(words)}\t{' | '.join(' '.join(ref) for ref in references[image])}\n"
        for image, words in zip(images, hypotheses, strict=True)
    ]
    write_text(Layout.test_captions, "".join(rows_text))

    shown = slice(0, SAMPLE_IMAGES)
    figures.samples(
        [Layout.images / image for image in images[shown]],
        [" ".join(words) for words in hypotheses[shown]],
        [[" ".join(ref) for ref in image_refs] for image_refs in refs[shown]],
        Layout.figures / "samples.png",
    )
    figures.histogram(cosines, Layout.figures / "cosine_similarity.png", "mean decoder word embeddings")
    for number, (image, ids, alphas) in enumerate(zip(images, attended, attention, strict=False), start=1):
        words = vocab.decode(ids)
        figures.attention_maps(
            Layout.images / image, words, alphas[: len(words)], Layout.figures / f"attention_{number}.png"
        )
    for note in notes:
        print(f"evaluate: {note}")
    shown = ", ".join(f"{key} {value}" for key, value in rounded.items())
    print(f"evaluate: {shown}")


if __name__ == "__main__":
    run(main)
