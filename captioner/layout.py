"""The project's layout: every path a stage reads or writes, relative to the project root (dvc.yaml names the
same), in one place."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

SPLITS = ("train", "dev", "test")


class TrainingOutputs(NamedTuple):
    model: Path  # the model directory (captioner.checkpoint)
    log: Path  # DVCLive's folder: the per-epoch curves and the training summary
    timings: Path  # seconds per epoch: outside git, they change every run


class Layout:
    """Every path a stage reads or writes, relative to the project root; dvc.yaml names the same."""

    raw = Path("data/raw")
    images = raw / "Flicker8k_Dataset"  # the Flickr8k release's own spelling
    captions_file = raw / "Flickr8k.token.txt"
    downloads = Path("data/downloads")  # partial downloads survive here for resume; not a DVC output
    captions = Path("data/captions")
    vocab = Path("data/vocab.json")
    features = Path("data/features")
    models = Path("models")  # the trained decoder and its card (see captioner.captioning)
    model = models / "captioner.keras"
    train_log = Path("metrics/train")  # DVCLive's folder: plots/ per epoch, metrics.json the training summary
    timings = Path("logs/train_epochs.tsv")  # seconds per epoch: outside git, they change every run
    scores = Path("metrics/scores.json")
    test_captions = Path("metrics/test_captions.tsv")
    figures = Path("metrics/figures")
    export = Path("export")  # the shipped model: SavedModel + TensorFlow Lite (captioner.export), a DVC artifact
    export_sizes = Path("metrics/export.json")

    ensemble = Path("ensemble")  # ensemble/<name>/: one member's model directory (its card: captioner.checkpoint)
    member_logs = Path("logs/ensemble")  # logs/ensemble/<name>/: a member's curves and timings, outside git
    # Where stages write: an interrupted write's temporaries are looked for here (captioner.files).
    output_roots = (Path("data"), models, Path("metrics"), ensemble, Path("logs"), export)

    @staticmethod
    def training_outputs(member: str | None = None) -> TrainingOutputs:
        """Where the train stage writes the main model, or ensemble member ``member``."""
        if member is None:
            return TrainingOutputs(Layout.models, Layout.train_log, Layout.timings)
        log = Layout.member_logs / member
        return TrainingOutputs(Layout.ensemble / member, log, log / "epochs.tsv")

    @staticmethod
    def split_list(split: str) -> Path:
        return Layout.raw / f"Flickr_8k.{split}Images.txt"

    @staticmethod
    def split_captions(split: str) -> Path:
        return Layout.captions / f"{split}.tsv"

    @staticmethod
    def features_file(encoder: str) -> Path:
        return Layout.features / f"{encoder}.h5"
