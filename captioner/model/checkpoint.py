"""A trained captioner on disk: the model file and its card (what decoding needs besides the weights), written
all or nothing and read back checked. ``captioner.captioning`` and ``captioner.model.ensemble`` build on it."""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import keras

from captioner import CaptionerError, artifacts, process
from captioner.boundary import field
from captioner.files import atomic_path
from captioner.model.decoder import Architecture, architecture, disagreement, parts
from captioner.model.spec import DecoderSpec
from captioner.text import SPECIAL_TOKENS, Vocabulary

MODEL_FILE, CARD_FILE = "captioner.keras", "captioner.json"


def write_card(
    directory: Path,
    features_attrs: dict,
    vocab: Vocabulary,
    spec: DecoderSpec,
    training: dict | None = None,
) -> None:
    """What decoding needs besides the weights: the encoder setup, the decoder spec and the vocabulary; and how
    the model was trained (``captioner.training.config.TrainConfig.card``: the dataset, so the caption command can say
    when that was a toy one, and ``finetune_from``: then the model file holds its own fine-tuned encoder). ``training``
    is None for a model trained outside the train stage (tests, benchmarks)."""
    training = training or {}
    card = {"dataset": training.get("dataset")}
    card |= {key: _plain(features_attrs[key]) for key in ("encoder", "weights", "weights_param", "input_size")}
    card |= {"decoder": spec.card(), "finetune_from": training.get("finetune_from"), "vocabulary_size": len(vocab)}
    card |= {"training": training or None, "vocabulary": vocab.words, "max_length": vocab.max_length}
    card |= {"machine": process.machine()}  # which CPU and kernels made the weights' last bits
    (directory / CARD_FILE).write_text(json.dumps(card, indent=1))


def save(
    directory: Path, model, features_attrs: dict, vocab: Vocabulary, spec: DecoderSpec, training: dict | None = None
) -> None:
    """The trained captioner ``model`` and its card (``write_card``) into ``directory``, all or nothing,
    byte-identical when the weights are (so DVC sees no change)."""
    with atomic_path(directory) as temporary:
        temporary.mkdir()
        model.save(temporary / MODEL_FILE)
        _without_timestamps(temporary / MODEL_FILE)
        write_card(temporary, features_attrs, vocab, spec, training)


def _without_timestamps(path: Path) -> None:
    """A Keras archive rewritten so the same weights give the same bytes: Keras stamps each member with the
    time, its metadata with the save date, and its config with ``id()``s of shared objects (numbered here in
    order instead); each made every retraining a new DVC output. Its dtype policies become float32."""
    with zipfile.ZipFile(path) as archive:
        members = [(info.filename, archive.read(info)) for info in archive.infolist()]
    rewritten = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(rewritten, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            if name == "metadata.json":
                data = json.dumps({k: v for k, v in json.loads(data).items() if k != "date_saved"}).encode()
            elif name == "config.json":
                config = _numbered_shared_objects(data.decode())
                parsed = json.loads(config)
                float32 = _float32_policies(parsed)
                data = (config if float32 == parsed else json.dumps(float32)).encode()
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
    rewritten.replace(path)


def _float32_policies(config):
    """``config`` with every mixed precision dtype policy made float32: the variables already are, and a
    model trained in mixed precision then reloads, decodes and fine-tunes in float32 like any other."""
    if isinstance(config, list):
        return [_float32_policies(item) for item in config]
    if not isinstance(config, dict):
        return config
    if config.get("class_name") == "DTypePolicy" and str(config["config"].get("name", "")).startswith("mixed_"):
        return config | {"config": config["config"] | {"name": "float32"}}
    return {key: _float32_policies(value) for key, value in config.items()}


def _numbered_shared_objects(config: str) -> str:
    numbers: dict[str, int] = {}

    def number(match: re.Match) -> str:
        return f'"shared_object_id": {numbers.setdefault(match.group(1), len(numbers) + 1)}'

    return re.sub(r'"shared_object_id": (\d+)', number, config)


# What a model card holds (``write_card``), each of its type.
CARD_FIELDS = {
    "dataset": (str, type(None)),
    "encoder": str,
    "weights": str,
    "weights_param": str,
    "input_size": int,
    "decoder": dict,
    "finetune_from": (str, type(None)),
    "vocabulary_size": int,
    "training": (dict, type(None)),
    "vocabulary": list,
    "max_length": int,
}


def read_card(directory: Path) -> dict:
    """The model card in ``directory``, every field of its type and its vocabulary whole; else one line naming it."""
    card_file = Path(directory) / CARD_FILE
    if not card_file.exists():
        raise CaptionerError(f"{card_file} is missing; run `dvc repro` (the train stage) first")
    card = artifacts.read_json(card_file)
    DecoderSpec.from_card(card, str(card_file))  # first: a card of an earlier version says so
    try:
        for key, kind in CARD_FIELDS.items():
            field(card, key, kind)
    except CaptionerError as err:
        raise artifacts.damaged(card_file, str(err)) from None
    words = card["vocabulary"]
    if not all(isinstance(word, str) for word in words) or len(set(words)) != len(words):
        raise artifacts.damaged(card_file, "its vocabulary holds a word that is not text, or one word twice")
    if card["vocabulary_size"] != len(words) + len(SPECIAL_TOKENS):
        raise artifacts.damaged(
            card_file, f"vocabulary_size {card['vocabulary_size']} for a vocabulary of {len(words)} words"
        )
    return card


@dataclass
class Trained:
    """A trained model as the train stage saved it: its card, decoder spec, fine-tuned encoder (or None) and
    architecture (its layers holding the saved weights)."""

    card: dict
    spec: DecoderSpec
    encoder: object | None
    architecture: Architecture

    @property
    def model(self) -> keras.Model:
        """The teacher-forced decoder model, holding the trained weights."""
        return self.architecture.model

    @property
    def reads_grid(self) -> bool:
        return self.architecture.reads_grid

    @property
    def vocab(self) -> Vocabulary:
        return Vocabulary(self.card["vocabulary"], self.card["max_length"])

    @classmethod
    def load(cls, directory: Path) -> Trained:
        """The model directory's contents, checked to agree with each other; one line naming the file that is
        absent, damaged or disagrees with its card. The decoder is rebuilt from its spec and given the saved
        weights, so decoding runs the architecture's own step."""
        card, model_file = read_card(directory), Path(directory) / MODEL_FILE
        spec = DecoderSpec.from_card(card, str(Path(directory) / CARD_FILE))
        if not model_file.exists():
            raise CaptionerError(f"{model_file} is missing; run `dvc repro` (the train stage) first")
        with artifacts.reading(model_file, "not a readable Keras model (truncated or corrupt?)"):
            if not zipfile.is_zipfile(model_file):
                raise ValueError("not a zip archive")
            encoder, saved = parts(keras.saving.load_model(model_file))
        rebuilt = architecture(spec, card["vocabulary_size"])
        mismatch = disagreement(saved, rebuilt.build(tuple(saved.inputs[0].shape[1:])))
        if mismatch:
            raise artifacts.damaged(model_file, f"disagrees with its card {CARD_FILE}: {mismatch}")
        rebuilt.model.set_weights(saved.get_weights())
        return cls(card, spec, encoder, rebuilt)

    def require_vocabulary(self, vocab: Vocabulary, source: Path) -> None:
        """A CaptionerError unless this model was trained on ``vocab`` (read from ``source``)."""
        if self.card["vocabulary"] != vocab.words:
            raise CaptionerError(
                f"{source} is not the vocabulary the model was trained on (its card: {len(self.card['vocabulary'])} "
                f"words, {source}: {len(vocab.words)}); `dvc repro` retrains the model on this one"
            )


def _plain(value):
    return value.item() if hasattr(value, "item") else value
