"""The evaluate stage's work: caption the test images, score the captions against their references, draw them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from captioner import CaptionerError, decoding, encoders, ensemble, figures, metrics
from captioner.batching import CaptionBatches, encode_captions
from captioner.checkpoint import Trained, features_seen_by
from captioner.datasets import read_captions, split_references
from captioner.decoder import Stepper, StepwiseDecoder
from captioner.encoders import Encoder
from captioner.ensemble import decoder_of
from captioner.features import FeatureFile
from captioner.files import atomic_path, write_text
from captioner.layout import Layout
from captioner.teacher_forcing import EpochStats, teacher_forced
from captioner.text import Vocabulary, strip_special

SAMPLE_IMAGES, ATTENTION_IMAGES = 12, 3
Words = list[str]


def evaluate(layout: Layout, encoder: str, settings: dict, members: list[str] = ()) -> tuple[dict, list[str]]:
    """The evaluate stage on the project in ``layout``: caption its test images with its model (decoding as the
    ``evaluate`` params ``settings`` say, as an ensemble with the ``members`` named if any) from the ``encoder``'s
    features, score the captions, and write the scores, the captions table and the figures. The scores, and notes
    on metrics that could not be computed."""
    metrics.start_meteor()  # its Java start-up overlaps the decoding
    vocab = Vocabulary.load(layout.vocab)
    test = read_captions(layout.split_captions("test"))
    with FeatureFile(layout.features_file(encoder), encoder) as cached:
        if not any(image in cached.row_of for image, _ in test):
            raise CaptionerError(f"no test image has both captions and features in {cached.path}; nothing to score")
        trained = Trained.load(layout.models)
        trained.require_vocabulary(vocab, layout.vocab)
        every = ensemble.members(trained, layout.members(members))
        result = caption_test_images(every, cached, encoders.get(encoder), layout.images, test, vocab, settings)
    train = read_captions(layout.split_captions("train"))
    values, cosines, notes = scores(result, trained, vocab, train, settings, len(every))
    # The figures first, into a scratch folder that replaces the last run's whole, then the tables, the scores last:
    # a stage that fails on the way leaves the last run's outputs.
    with atomic_path(layout.figures) as figures_folder:
        figures_folder.mkdir()
        draw(result, cosines, layout.images, figures_folder)
        write_text(layout.test_captions, captions_table(result))
        write_text(layout.scores, json.dumps(values, indent=2) + "\n")
    return values, notes


@dataclass
class Evaluation:
    images: list[str]
    references: list[list[Words]]
    hypotheses: list[Words]  # the generated caption of each image
    forced: EpochStats  # the teacher-forced loss and token accuracy on the test captions
    attended: list[tuple[Words, np.ndarray]]  # attention decoders: the first images' greedy words and weights


def caption_test_images(
    members: list[Trained],
    cached: FeatureFile,
    encoder: Encoder,
    images_folder: Path,
    test: list[tuple[str, list[str]]],
    vocab: Vocabulary,
    settings: dict,
) -> Evaluation:
    """Decode the test images that have ``cached`` features as the ``evaluate`` params say (beam search, or greedy
    for ``beam_size`` 1), ``settings["batch_size"]`` images at a time, with the ensemble of ``members`` (one model
    or several, ``captioner.ensemble``), through the fine-tuned encoder when the main model (the first) has one.
    The teacher-forced scores and attention maps are the main model's."""
    trained = members[0]
    images, _, references = split_references(test, cached.row_of)
    paths = [images_folder / image for image in images]
    pooled, batch_size = not trained.reads_grid, settings["batch_size"]
    with features_seen_by(trained, cached, encoder, paths, batch_size) as store:
        read, rows = store.reader(pooled), np.array([store.row_of[image] for image in images])
        decoder = decoder_of(members)
        # A second reader only when the ensemble reads the other form: a pooled reader loads its whole table.
        decoder_read = read if decoder.reads_grid == trained.reads_grid else store.reader(not decoder.reads_grid)
        generated = _decoded(decoder, decoder_read, rows, vocab, settings)
        test_rows, sequences, _ = encode_captions(test, store.row_of, vocab)
        test_batches = CaptionBatches(read, store.shape(pooled), test_rows, sequences, batch_size)
        forced = teacher_forced(trained.decoder, trained.architecture.head, test_batches)
        attended = []
        if not pooled:  # the main model's own stepper: an ensemble's has no attention weights
            stepper = decoder if len(members) == 1 else Stepper(trained.architecture)
            attended = _attended(stepper, read, rows[:ATTENTION_IMAGES], vocab, settings["max_len"])
    return Evaluation(images, references, [vocab.decode(ids) for ids in generated], forced, attended)


def _decoded(decoder: StepwiseDecoder, read, rows: np.ndarray, vocab: Vocabulary, settings: dict) -> np.ndarray:
    decode = (vocab.start_id, vocab.end_id, settings["max_len"])
    if settings["beam_size"] == 1:
        return decoding.greedy(decoder, read, rows, *decode, settings["batch_size"])
    beam = (settings["beam_size"], settings["length_penalty"])
    return decoding.beam_search(decoder, read, rows, *decode, *beam, batch_size=settings["batch_size"])[0]


def _attended(
    stepper: StepwiseDecoder, read, rows: np.ndarray, vocab: Vocabulary, max_len: int
) -> list[tuple[Words, np.ndarray]]:
    """The greedy words of the images at ``rows`` and the attention weights each word was chosen with."""
    attention: list = []
    generated = decoding.greedy(stepper, read, rows, vocab.start_id, vocab.end_id, max_len, attention=attention)
    words = [vocab.decode(ids) for ids in generated]
    return [(w, alphas[: len(w)]) for w, alphas in zip(words, attention, strict=True)]


def scores(
    evaluation: Evaluation,
    trained: Trained,
    vocab: Vocabulary,
    train: list[tuple[str, list[str]]],
    settings: dict,
    ensemble_size: int = 1,
) -> tuple[dict, np.ndarray, list[str]]:
    """The test scores (rounded to 4 digits) with the settings they were decoded with; the cosine similarity of
    each image's caption to its references (for the histogram); notes on metrics that could not be computed."""
    embeddings = trained.architecture.embedding.get_weights()[0]  # the space of the cosine similarity
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
        **({"ensemble_members": ensemble_size} if ensemble_size > 1 else {}),
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
