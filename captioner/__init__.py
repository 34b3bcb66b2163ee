"""CNN-encoder → RNN-decoder image captioning: the library behind the DVC stages in ``stages/``, and its Python API.

    from captioner import Captioner, Layout, TrainConfig, train, train_config

Importing changes nothing in the process. The API readies it (``captioner.process.prepare``: a quiet TensorFlow)
the first time ``Captioner`` or ``train`` is used, before TensorFlow starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from captioner.captioning import Captioner
    from captioner.layout import Layout
    from captioner.training.config import TrainConfig

__all__ = ["Captioner", "CaptionerError", "Layout", "TrainConfig", "train", "train_config"]


class CaptionerError(Exception):
    """A problem with the user's input, params or files, reported as one line (``error: …``) by every stage
    and the caption command, never as a traceback."""


def train_config(project: Layout | str = ".", member: str | None = None) -> TrainConfig:
    """The train stage's config as the params.yaml of the project folder ``project`` sets it (with ``member``: that
    ensemble member's). Change it with ``dataclasses.replace``. A bad param is a one-line ``CaptionerError``."""
    from captioner.layout import Layout
    from captioner.stage import declared_params
    from captioner.training.config import TrainConfig

    root = (project if isinstance(project, Layout) else Layout(project)).root
    return TrainConfig.from_params(declared_params("train", root, member=member))


def train(config: TrainConfig, project: Layout | str = ".", into: Layout | str | None = None) -> dict:
    """Train the decoder ``config`` describes on the project folder ``project`` (its features, captions and
    vocabulary, as ``dvc repro`` made them) and save it as the train stage does: under ``project``, or under the
    folder ``into`` instead (``into/models/`` holds the model ``Captioner.load`` reads, ``into/metrics/train/`` its
    curves; an ensemble member's config: ``into/ensemble/<member>/``). Returns the training summary (best epoch,
    best dev loss, epochs run, …). A bad setting or file is a one-line ``CaptionerError``."""
    from captioner import process
    from captioner.layout import Layout

    process.prepare()
    from captioner.training.train import train as train_model

    inputs = project if isinstance(project, Layout) else Layout(project)
    outputs = into if isinstance(into, Layout) else Layout(into) if into is not None else inputs
    return train_model(config, inputs, outputs.training_outputs(config.member))


def __getattr__(name: str):
    """The API's classes, imported on first use: ``Captioner`` starts TensorFlow, after readying the process."""
    if name == "Captioner":
        from captioner import process

        process.prepare()
        from captioner.captioning import Captioner

        return Captioner
    if name == "TrainConfig":
        from captioner.training.config import TrainConfig

        return TrainConfig
    if name == "Layout":
        from captioner.layout import Layout

        return Layout
    raise AttributeError(f"module 'captioner' has no attribute {name!r}")
