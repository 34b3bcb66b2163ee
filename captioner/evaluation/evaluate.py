"""The evaluate stage's work: caption the test images, score the captions against their references, draw them."""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from captioner import CaptionerError
from captioner.datasets import read_captions, split_references
from captioner.evaluation import figures, metrics
from captioner.features import encoders
from captioner.features.encoders import Encoder
from captioner.features.extraction import FeatureFile, written_by
from captioner.files import atomic_path, write_text
from captioner.layout import Layout
from captioner.model import decoding, ensemble
from captioner.model.checkpoint import Trained
from captioner.model.decoder import Steppable, Stepper
from captioner.model.decoding import DecodeSettings
from captioner.model.ensemble import stepper_of
from captioner.text import Vocabulary, strip_special
from captioner.training.batching import CaptionBatches, encode_captions
from captioner.training.loss import EpochStats, teacher_forced

SAMPLE_IMAGES, ATTENTION_IMAGES = 12, 3
Words = list[str]


def evaluate(
    layout: Layout, encoder: str, settings: DecodeSettings, members: list[str] = (), batch_size: int = 256
) -> tuple[dict, list[str]]:
    """The evaluate stage on the project in ``layout``: caption its test images with its model (decoding as
    ``settings`` say, ``batch_size`` images at a time, as an ensemble with the ``members`` named if any) from the
    ``encoder``'s features, score the captions, and write the scores, the captions table and the figures. The
    scores, and notes on metrics that could not be computed."""
    metrics.start_meteor()  # its Java start-up overlaps the decoding
    vocab = Vocabulary.load(layout.vocab)
    test = read_captions(layout.split_captions("test"))
    with FeatureFile(layout.features_file(encoder), encoder) as cached:
        if not any(image in cached.row_of for image, _ in test):
            raise CaptionerError(f"no test image has both captions and features in {cached.path}; nothing to score")
        trained = Trained.load(layout.models)
        trained.require_vocabulary(vocab, layout.vocab)
        every = ensemble.members(trained, layout.members(members))
        images = (encoders.get(encoder), layout.images)
        result = caption_test_images(every, cached, images, test, vocab, settings, batch_size)
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
    images: tuple[Encoder, Path],
    test: list[tuple[str, list[str]]],
    vocab: Vocabulary,
    settings: DecodeSettings,
    batch_size: int,
) -> Evaluation:
    """Decode the test images that have ``cached`` features as ``settings`` say (beam search, or greedy for beam
    width 1), ``batch_size`` images at a time, with the ensemble of ``members`` (one model or several,
    ``captioner.model.ensemble``), through the fine-tuned encoder (of ``images``: the encoder and the images
    folder) when the main model (the first) has one. The teacher-forced scores and attention maps are the main
    model's."""
    trained = members[0]
    (encoder, images_folder), (images, _, references) = images, split_references(test, cached.row_of)
    paths = [images_folder / image for image in images]
    pooled = not trained.reads_grid
    with features_seen_by(trained, cached, encoder, paths, batch_size) as store:
        read, rows = store.reader(pooled), np.array([store.row_of[image] for image in images])
        stepper = stepper_of(members)
        # A second reader only when the ensemble reads the other form: a pooled reader loads its whole table.
        stepper_read = read if stepper.reads_grid == trained.reads_grid else store.reader(not stepper.reads_grid)
        generated = decoding.decode(stepper, stepper_read, rows, settings, batch_size).ids
        test_rows, sequences, _ = encode_captions(test, store.row_of, vocab)
        test_batches = CaptionBatches(read, store.shape(pooled), test_rows, sequences, batch_size)
        forced = teacher_forced(trained.model, trained.architecture.head, test_batches)
        attended = []
        if not pooled:  # the main model's own stepper: an ensemble's has no attention weights
            own = stepper if len(members) == 1 else Stepper(trained.architecture)
            attended = _attended(own, read, rows[:ATTENTION_IMAGES], vocab, settings.max_len)
    return Evaluation(images, references, [vocab.decode(ids) for ids in generated], forced, attended)


def _attended(
    stepper: Steppable, read, rows: np.ndarray, vocab: Vocabulary, max_len: int
) -> list[tuple[Words, np.ndarray]]:
    """The greedy words of the images at ``rows`` and the attention weights each word was chosen with."""
    decoded = decoding.greedy(stepper, read, rows, max_len, attention=True)
    words = [vocab.decode(ids) for ids in decoded.ids]
    return [(w, alphas[: len(w)]) for w, alphas in zip(words, decoded.attention, strict=True)]


def scores(
    evaluation: Evaluation,
    trained: Trained,
    vocab: Vocabulary,
    train: list[tuple[str, list[str]]],
    settings: DecodeSettings,
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
        **asdict(settings),
        **({"ensemble_members": ensemble_size} if ensemble_size > 1 else {}),
    }
    rounded = {key: round(value, 4) if isinstance(value, float) else value for key, value in values.items()}
    return rounded, cosines, notes


def features_seen_by(
    trained: Trained, cached: FeatureFile, encoder: Encoder, paths: list[Path], batch_size: int
) -> contextlib.AbstractContextManager[FeatureFile]:
    """The features the decoder of ``trained`` reads for the images at ``paths``: the cached file when its
    encoder was frozen, else a temporary file its fine-tuned encoder writes, read like the cached one."""
    if trained.encoder is None:
        return contextlib.nullcontext(cached)
    return written_by(trained.encoder, cached, encoder, paths, batch_size, f"{encoder.name} (fine-tuned)")


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
