"""A trained captioner as one object: encoder + decoder + vocabulary, loaded from the model directory."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from captioner.stage import StageError
from captioner.text import Vocabulary

MODEL_FILE, CARD_FILE = "captioner.keras", "captioner.json"


def write_card(directory: Path, features_attrs: dict, vocab: Vocabulary, finetune_from: str | None = None) -> None:
    """What the caption command needs besides the weights: the encoder setup and the vocabulary.

    With ``finetune_from`` the model file holds its own fine-tuned encoder; the card says from where.
    """
    card = {
        key: _plain(features_attrs[key]) for key in ("encoder", "weights", "weights_param", "input_size", "pooling")
    }
    card |= {"finetune_from": finetune_from, "vocabulary": vocab.words, "max_length": vocab.max_length}
    (directory / CARD_FILE).write_text(json.dumps(card, indent=1))


def read_card(directory: Path) -> dict:
    card_file = Path(directory) / CARD_FILE
    if not card_file.exists():
        raise StageError(f"{card_file} is missing; run `dvc repro` (the train stage) first")
    return json.loads(card_file.read_text())


def load_trained(directory: Path) -> tuple[dict, object, object]:
    """(card, fine-tuned encoder or None, decoder) of a trained captioner directory, with a clear error if absent."""
    import keras

    from captioner.decoder import parts

    card, model_file = read_card(directory), Path(directory) / MODEL_FILE
    if not model_file.exists():
        raise StageError(f"{model_file} is missing; run `dvc repro` (the train stage) first")
    return card, *parts(keras.saving.load_model(model_file))


def _plain(value):
    return value.item() if hasattr(value, "item") else value


@dataclass
class Captioner:
    model: object
    vocab: Vocabulary
    extractor: object

    @classmethod
    def load(cls, directory: Path) -> Captioner:
        from captioner import encoders
        from captioner.decoder import architecture
        from captioner.features import Extractor

        card, encoder_model, model = load_trained(directory)
        pooling = "grid" if architecture(model)[1] == "attention" else "avg"
        extractor = Extractor(
            encoders.get(card["encoder"]), pooling, card["weights_param"], card["input_size"], model=encoder_model
        )
        return cls(model, Vocabulary(card["vocabulary"], card["max_length"]), extractor)

    def caption(
        self, paths: list[Path], beam_size: int = 3, max_len: int | None = None
    ) -> tuple[dict[Path, str], dict[Path, str]]:
        """Captions of the readable images, and the reason each other path failed."""
        from captioner import decoding
        from captioner.decoder import Stepper

        features, failures = self.extractor.features(paths)
        if self.extractor.pooling == "grid":
            features = features.reshape(len(features), -1, features.shape[-1])
        readable = [path for path in paths if path not in failures]
        if not readable:
            return {}, failures
        ids, _ = decoding.beam_search(
            Stepper(self.model),
            features.__getitem__,
            np.arange(len(readable)),
            self.vocab.start_id,
            self.vocab.end_id,
            max_len or self.vocab.max_length,
            beam_size,
        )
        return {path: " ".join(self.vocab.decode(row)) for path, row in zip(readable, ids, strict=True)}, failures
