"""The evaluate stage's work: caption the test images, score the captions against their references, draw them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from captioner import decoding, figures, metrics
from captioner.batching import CaptionBatches, encode_captions
from captioner.captioning import Trained, features_seen_by
from captioner.datasets import split_references
from captioner.decoder import Stepper
from captioner.encoders import Encoder
from captioner.ensemble import stepper_of
from captioner.features import FeatureFile
from captioner.teacher_forcing import EpochStats, teacher_forced
from captioner.text import Vocabulary, strip_special

SAMPLE_IMAGES, ATTENTION_IMAGES = 12, 3
Words = list[str]


@dataclass
class Evaluation:
    images: list[str]
    references: list[list[Words]]
    hypotheses: list[Words]  # the generated caption of each image
    forced: EpochStats  # the teacher-forced loss and token accuracy on the test captions
    attended: list[tuple[Words, np.ndarray]]  # attention decoders: the first images' greedy words and weights


def caption_test_images(
    trained: Trained,
    cached: FeatureFile,
    encoder: Encoder,
    images_folder: Path,
    test: list[tuple[str, list[str]]],
    vocab: Vocabulary,
    settings: dict,
    members: list[Trained] = (),
) -> Evaluation:
    """Decode the test images that have ``cached`` features as the ``evaluate`` params say (beam search, or greedy
    for ``beam_size`` 1), through the fine-tuned encoder when ``trained`` has one, or as an ensemble with the
    other ``members`` (``captioner.ensemble``). The teacher-forced scores and attention maps are ``trained``'s."""
    images, _, references = split_references(test, cached.row_of)
    paths = [images_folder / image for image in images]
    pooled, batch_size = not trained.spec.reads_grid, settings["batch_size"]
    with features_seen_by(trained, cached, encoder, paths, batch_size) as store:
        read, rows = store.reader(pooled), np.array([store.row_of[image] for image in images])
        stepper, decode = Stepper(trained.decoder, trained.spec), (vocab.start_id, vocab.end_id, settings["max_len"])
        decoder = stepper_of([trained, *members]) if members else stepper
        # A second reader only when the ensemble reads the other form: a pooled reader loads its whole table.
        decoder_read = read if decoder.reads_grid == trained.spec.reads_grid else store.reader(not decoder.reads_grid)
        if settings["beam_size"] > 1:
            beam = (settings["beam_size"], settings["length_penalty"])
            generated, _ = decoding.beam_search(decoder, decoder_read, rows, *decode, *beam)
        else:
            generated = decoding.greedy(decoder, decoder_read, rows, *decode, batch_size)
        test_rows, sequences, _ = encode_captions(test, store.row_of, vocab)
        test_batches = CaptionBatches(read, store.shape(pooled), test_rows, sequences, batch_size)
        forced = teacher_forced(trained.decoder, test_batches)
        attention: list = []
        attended = []
        if not pooled:
            attended = decoding.greedy(stepper, read, rows[:ATTENTION_IMAGES], *decode, attention=attention)
    words = [vocab.decode(ids) for ids in attended]
    attended_words = [(w, alphas[: len(w)]) for w, alphas in zip(words, attention, strict=True)]
    return Evaluation(images, references, [vocab.decode(ids) for ids in generated], forced, attended_words)


def scores(
    evaluation: Evaluation,
    trained: Trained,
    vocab: Vocabulary,
    train: list[tuple[str, list[str]]],
    settings: dict,
    members: int = 1,
) -> tuple[dict, np.ndarray, list[str]]:
    """The test scores (rounded to 4 digits) with the settings they were decoded with; the cosine similarity of
    each image's caption to its references (for the histogram); notes on metrics that could not be computed."""
    embeddings = trained.decoder.get_layer("embedding").get_weights()[0]  # the space of the cosine similarity
    train_captions = {" ".join(strip_special(tokens)) for _, tokens in train}
    text_scores, cosines, notes = metrics.caption_scores(
        evaluation.references, evaluation.hypotheses, embeddings, vocab.ids, train_captions
    )
    values = {
        **text_scores,
        "perplexity": evaluation.forced.perplexity,
        "token_accuracy": evaluation.forced.accuracy,
        "test_images": len(evaluation.images),
        "finetune_from": trained.card.get("finetune_from"),
        "beam_size": settings["beam_size"],
        "length_penalty": settings["length_penalty"],
        "max_len": settings["max_len"],
        **({"ensemble_members": members} if members > 1 else {}),
    }
    rounded = {key: round(value, 4) if isinstance(value, float) else value for key, value in values.items()}
    return rounded, cosines, notes


def captions_table(evaluation: Evaluation) -> str:
    """Tab-separated: each test image, its generated caption, its references joined by `` | ``."""
    rows = zip(evaluation.images, evaluation.hypotheses, evaluation.references, strict=True)
    return "image\tgenerated\treferences\n" + "".join(
        f"{image}\t{' '.join(words)}\t{' | '.join(' '.join(ref) for ref in refs)}\n" for image, words, refs in rows
    )


def draw(evaluation: Evaluation, cosines: np.ndarray, images_folder: Path, folder: Path) -> None:
    """Sample captions beside references, the cosine histogram, and attention maps when the decoder attends."""
    shown = slice(0, SAMPLE_IMAGES)
    figures.samples(
        [images_folder / image for image in evaluation.images[shown]],
        [" ".join(words) for words in evaluation.hypotheses[shown]],
        [[" ".join(ref) for ref in refs] for refs in evaluation.references[shown]],
        folder / "samples.png",
    )
    figures.histogram(cosines, folder / "cosine_similarity.png", "mean decoder word embeddings")
    attended = zip(evaluation.images, evaluation.attended, strict=False)  # the first images only
    for number, (image, (words, alphas)) in enumerate(attended, start=1):
        figures.attention_maps(images_folder / image, words, alphas, folder / f"attention_{number}.png")
