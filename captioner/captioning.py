"""A trained captioner as one object: encoder + decoder + vocabulary, loaded from the model directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from captioner import decoding, encoders, ensemble
from captioner.checkpoint import Trained
from captioner.decoder import StepwiseDecoder
from captioner.features import Extractor


@dataclass
class Captioner:
    trained: Trained
    extractor: object
    members: list[Trained]  # the ensemble it decodes with: ``trained`` first; just it without others
    decoder: StepwiseDecoder  # the members decoding as one (``ensemble.decoder_of``)

    @classmethod
    def load(cls, directory: Path, others: list[Path] = ()) -> Captioner:
        """The captioner in ``directory``, decoding as an ensemble with the models in ``others`` if any."""
        trained = Trained.load(directory)
        every = ensemble.members(trained, list(others))
        card, pooling = trained.card, "grid" if any(member.reads_grid for member in every) else "avg"
        extractor = Extractor(
            encoders.get(card["encoder"]), pooling, card["weights_param"], card["input_size"], model=trained.encoder
        )
        return cls(trained, extractor, every, ensemble.decoder_of(every))

    def caption(
        self, paths: list[Path], beam_size: int = 3, max_len: int | None = None, length_penalty: float = 0.0
    ) -> tuple[dict[Path, str], dict[Path, str]]:
        """Captions of the readable images (beams ranked as ``decoding.beam_search`` says), and the reason each
        other path failed."""
        features, failures = self.extractor.features(paths)
        if self.extractor.pooling == "grid":
            features = features.reshape(len(features), -1, features.shape[-1])
        readable = [path for path in paths if path not in failures]
        if not readable:
            return {}, failures
        vocab = self.trained.vocab
        ids, _ = decoding.beam_search(
            self.decoder,
            features.__getitem__,
            np.arange(len(readable)),
            vocab.start_id,
            vocab.end_id,
            max_len or vocab.max_length,
            beam_size,
            length_penalty,
        )
        return {path: " ".join(vocab.decode(row)) for path, row in zip(readable, ids, strict=True)}, failures
