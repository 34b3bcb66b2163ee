"""The encoder registry: the one place that knows each encoder's input size, preprocessing and output.

Every encoder is a frozen Keras model from an RGB image in [0, 255], preprocessed by its own
function, to an H×W×C feature grid (pooling happens in ``captioner.features.extraction``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from captioner import CaptionerError
from captioner.features import efficientnet_lite
from captioner.files import sha256_of
from captioner.params import choice

WEIGHTS_CHOICES = "imagenet | none | <path to a Keras .weights.h5 file>"


@dataclass(frozen=True)
class Encoder:
    name: str
    input_size: int  # default square input, in pixels (the usual captioning choice, else the network's natural size)
    grid: int  # side of the feature grid at input_size
    channels: int
    preprocessing: str  # human-readable, recorded in the features file
    application: str | None  # "module.Class" under keras.applications; None for the Lite family (efficientnet_lite)

    @property
    def preprocess(self) -> Callable:
        """RGB float tensor in [0, 255] → network input (works inside tf.data)."""
        if self.application is None:
            return efficientnet_lite.preprocess
        module = importlib.import_module(f"keras.applications.{self.application.split('.')[0]}")
        return module.preprocess_input

    def build(self, weights: str, image_size: int | None = None):
        """The frozen backbone at ``image_size`` (default: the registry's) with ``weights``."""
        import keras

        size = image_size or self.input_size
        if weights == "none":
            keras.utils.set_random_seed(0)  # random but repeatable, so features files compare across runs
        elif weights != "imagenet" and not Path(weights).is_file():
            raise CaptionerError(f"features.weights {weights!r} is neither imagenet, none, nor an existing file")
        if self.application is None:
            variant = efficientnet_lite.VARIANTS[self.name]
            make = efficientnet_lite.pretrained if weights == "imagenet" else efficientnet_lite.build
            model = make(variant, input_size=size)
        else:
            module, constructor = self.application.split(".")
            application = getattr(importlib.import_module(f"keras.applications.{module}"), constructor)
            try:
                imagenet = "imagenet" if weights == "imagenet" else None
                model = application(include_top=False, weights=imagenet, input_shape=(size, size, 3))
            except Exception as err:
                if "URL fetch failure" not in str(err):
                    raise
                raise CaptionerError(
                    f"cannot download the ImageNet weights of {self.name} (offline?); set features.weights to a local "
                    f"Keras weights file or to none, or use efficientnet_lite0/1/2, whose weights ship with pip"
                ) from err
        if weights not in ("imagenet", "none"):
            try:
                model.load_weights(weights)
            except (ValueError, OSError) as err:
                raise CaptionerError(f"{weights}: not Keras weights for {self.name} ({err})") from err
        model.trainable = False
        return model

    def weights_identity(self, weights: str) -> str:
        """What the features were computed with, precisely enough to tell two weight sets apart."""
        if weights == "imagenet" and self.application is None:
            variant = efficientnet_lite.VARIANTS[self.name]
            return f"imagenet: {variant.package} sha256:{variant.sha256}"
        if weights == "imagenet":
            return f"imagenet: keras.applications.{self.application}"
        if weights == "none":
            return "none: random initialisation, seed 0"
        return f"{Path(weights).name} sha256:{sha256_of(Path(weights))}"


_CAFFE = "caffe: RGB→BGR, minus the ImageNet channel means"
_TF = "x / 127.5 - 1"
_IN_GRAPH = "none outside the model (it rescales internally)"
_EFFICIENTNET_SIZES = (224, 240, 260, 300, 380, 456, 528, 600)
_EFFICIENTNET_CHANNELS = (1280, 1280, 1408, 1536, 1792, 2048, 2304, 2560)

REGISTRY: dict[str, Encoder] = {
    encoder.name: encoder
    for encoder in [
        *(
            Encoder(
                lite.name,
                lite.input_size,
                -(-lite.input_size // 32),
                efficientnet_lite.HEAD_CHANNELS,
                "(x - 127) / 128",
                None,
            )
            for lite in efficientnet_lite.VARIANTS.values()
        ),
        Encoder("vgg16", 224, 7, 512, _CAFFE, "vgg16.VGG16"),
        Encoder("resnet50", 224, 7, 2048, _CAFFE, "resnet.ResNet50"),
        Encoder("resnet152", 448, 14, 2048, _CAFFE, "resnet.ResNet152"),
        Encoder("inception_v3", 299, 8, 2048, _TF, "inception_v3.InceptionV3"),
        Encoder("mobilenet_v2", 224, 7, 1280, _TF, "mobilenet_v2.MobileNetV2"),
        *(
            Encoder(f"efficientnetb{b}", size, -(-size // 32), channels, _IN_GRAPH, f"efficientnet.EfficientNetB{b}")
            for b, (size, channels) in enumerate(zip(_EFFICIENTNET_SIZES, _EFFICIENTNET_CHANNELS, strict=True))
        ),
    ]
}


def get(name: str) -> Encoder:
    """The registry entry for ``name``; a CaptionerError listing the known encoders otherwise."""
    return REGISTRY[choice(name, REGISTRY, "encoder")]
