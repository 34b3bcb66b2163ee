"""The project's layout: every path a stage reads or writes, under one project folder (dvc.yaml names the same,
relative to it), in one place. A ``Layout`` is a value: every entry point takes one, so the library runs on any
project folder from any working directory."""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import NamedTuple

SPLITS = ("train", "dev", "test")


class Release:
    """Names inside a raw dataset folder: the Flickr8k release's own (its spelling too), which every dataset
    source is written as, so every later stage runs the same code for each."""

    images = "Flicker8k_Dataset"
    captions_file = "Flickr8k.token.txt"

    @staticmethod
    def split_list(split: str) -> str:
        return f"Flickr_8k.{split}Images.txt"


class TrainingOutputs(NamedTuple):
    model: Path  # the model directory (captioner.model.checkpoint)
    log: Path  # DVCLive's folder: the per-epoch curves and the training summary
    timings: Path  # seconds per epoch: outside git, they change every run


class Layout:
    """Every path a stage reads or writes, under the project folder ``root`` (default: the working directory);
    dvc.yaml names the same, relative to it."""

    def __init__(self, root: Path | str = "."):
        self.root = root = Path(root)
        self.raw = root / "data" / "raw"
        self.images = self.raw / Release.images
        self.captions_file = self.raw / Release.captions_file
        self.downloads = root / "data" / "downloads"  # partial downloads survive here for resume; not a DVC output
        self.captions = root / "data" / "captions"
        self.vocab = root / "data" / "vocab.json"
        self.features = root / "data" / "features"
        self.machine_record = root / "metrics" / "machine.json"  # the CPU and kernels that made the features (in git)
        self.models = root / "models"  # the trained decoder and its card (see captioner.model.checkpoint)
        self.model = self.models / "captioner.keras"
        self.train_log = root / "metrics" / "train"  # DVCLive's: plots/ per epoch, metrics.json the summary
        self.timings = root / "logs" / "train_epochs.tsv"  # seconds per epoch: outside git, they change every run
        self.scores = root / "metrics" / "scores.json"
        self.test_captions = root / "metrics" / "test_captions.tsv"
        self.figures = root / "metrics" / "figures"
        self.export = root / "export"  # the shipped model: SavedModel + TensorFlow Lite (captioner.export)
        self.export_sizes = root / "metrics" / "export.json"
        self.ensemble = root / "ensemble"  # ensemble/<name>/: one member's model directory
        self.member_logs = root / "logs" / "ensemble"  # logs/ensemble/<name>/: a member's curves and timings
        # Where stages write: an interrupted write's temporaries are looked for here (captioner.files).
        self.output_roots = (root / "data", self.models, root / "metrics", self.ensemble, root / "logs", self.export)

    def __repr__(self) -> str:
        return f"Layout({str(self.root)!r})"

    def located(self, value: str | list | None) -> str | list | None:
        """A param naming a file or folder (a path or a URL; a list of them): a relative path is the project
        folder's, as DVC runs every stage from there, whatever the working directory of this process."""
        if isinstance(value, list):
            return [self.located(item) for item in value]
        if not value or len(urllib.parse.urlparse(value).scheme) > 1 or Path(value).is_absolute():
            return value
        return str(self.root / value)

    def training_outputs(self, member: str | None = None) -> TrainingOutputs:
        """Where training writes the main model, or ensemble member ``member``."""
        if member is None:
            return TrainingOutputs(self.models, self.train_log, self.timings)
        log = self.member_logs / member
        return TrainingOutputs(self.ensemble / member, log, log / "epochs.tsv")

    def members(self, names) -> list[Path]:
        """The model directories of the ensemble members ``names``."""
        return [self.ensemble / name for name in names]

    def split_list(self, split: str) -> Path:
        return self.raw / Release.split_list(split)

    def split_captions(self, split: str) -> Path:
        return self.captions / f"{split}.tsv"

    def features_file(self, encoder: str) -> Path:
        return self.features / f"{encoder}.h5"
