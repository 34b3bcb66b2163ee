"""A trained captioner as one object: encoder + decoder + vocabulary, loaded from a model directory; the Python API's
``Captioner``.

    captioner = Captioner.load("models")
    for result in captioner.caption(["photo.jpg", "other.png"], beam_size=3):
        print(result.image, result.text, result.log_prob, result.error)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from captioner.features import encoders
from captioner.features.extraction import Extractor
from captioner.model import decoding, ensemble
from captioner.model.checkpoint import Trained
from captioner.model.decoder import Steppable
from captioner.model.decoding import DecodeSettings

CHUNK = 32  # images decoded and captioned at a time: 32 × 224² × 3 floats, 19 MB of pixels


class Caption(NamedTuple):
    """One image's caption, or why it has none."""

    image: Path
    text: str  # the caption's words, space-separated; "" when the image was not captioned
    log_prob: float  # the caption's summed log-probability (nan when not captioned)
    error: str | None  # why the image was not captioned (missing, not an image, too large, …), else None


@dataclass
class Captioner:
    trained: Trained
    extractor: Extractor
    members: list[Trained]  # the ensemble it decodes with: ``trained`` first; just it without others
    stepper: Steppable  # the members decoding as one (``ensemble.stepper_of``)

    @classmethod
    def load(cls, directory: Path | str = "models", others: list[Path | str] = ()) -> Captioner:
        """The captioner the train stage saved in ``directory``, decoding as an ensemble with the models in the
        directories ``others`` if any (``ensemble/<name>``). A missing or damaged model is a one-line
        ``CaptionerError`` naming it."""
        trained = Trained.load(Path(directory))
        every = ensemble.members(trained, [Path(other) for other in others])
        card, pooling = trained.card, "grid" if any(member.reads_grid for member in every) else "avg"
        extractor = Extractor(
            encoders.get(card["encoder"]), pooling, card["weights_param"], card["input_size"], model=trained.encoder
        )
        return cls(trained, extractor, every, ensemble.stepper_of(every))

    def caption(
        self,
        images: list[Path | str],
        beam_size: int = 3,
        max_len: int | None = None,
        length_penalty: float = 0.0,
    ) -> list[Caption]:
        """A ``Caption`` of each image file, in order: the best of ``beam_size`` beams (1: greedy) up to ``max_len``
        tokens (default: the vocabulary's longest caption), beams ranked by log-probability ÷ length **
        ``length_penalty``. An image that cannot be read fails alone, with its reason in ``error``."""
        return list(self.captions(images, beam_size, max_len, length_penalty))

    def captions(
        self,
        images: Iterable[Path | str],
        beam_size: int = 3,
        max_len: int | None = None,
        length_penalty: float = 0.0,
    ) -> Iterator[Caption]:
        """``caption``'s results one by one, as they are ready: the images are read and captioned ``CHUNK`` at a
        time, so memory stays flat however many there are."""
        paths = iter(Path(image) for image in images)
        while chunk := list(itertools.islice(paths, CHUNK)):
            yield from self._chunk(chunk, beam_size, max_len, length_penalty)

    def _chunk(self, paths: list[Path], beam_size: int, max_len: int | None, length_penalty: float) -> list[Caption]:
        features, failures = self.extractor.features(paths)
        if self.extractor.pooling == "grid":
            features = features.reshape(len(features), -1, features.shape[-1])
        readable = [path for path in paths if path not in failures]
        captions: dict[Path, Caption] = {path: Caption(path, "", math.nan, reason) for path, reason in failures.items()}
        if readable:
            vocab = self.trained.vocab
            settings = DecodeSettings(beam_size, length_penalty, max_len or vocab.max_length)
            decoded = decoding.beam_search(self.stepper, features.__getitem__, np.arange(len(readable)), settings)
            for path, row, log_prob in zip(readable, decoded.ids, decoded.log_probs, strict=True):
                captions[path] = Caption(path, " ".join(vocab.decode(row)), float(log_prob), None)
        return [captions[path] for path in paths]
