"""The Lite family built in Keras from the offline torch pickles (captioner.features.efficientnet_lite)."""

import pickle

import numpy as np
import pytest
import skimage.data

from captioner.features import efficientnet_lite
from captioner.files import sha256_of

# ImageNet class ids: 281 tabby, 282 tiger cat, 285 Egyptian cat; 967 espresso, 968 cup, 504 coffee mug.
CATS, COFFEE = {281, 282, 283, 284, 285}, {967, 968, 504}


LITE0 = efficientnet_lite.VARIANTS["efficientnet_lite0"]


def _top1(model, image: np.ndarray, size: int) -> int:
    import tensorflow as tf

    resized = tf.image.resize(image[None].astype("float32"), (size, size), antialias=True)
    return int(np.argmax(model.predict(efficientnet_lite.preprocess(resized), verbose=0)[0]))


@pytest.mark.parametrize("name", sorted(efficientnet_lite.VARIANTS))
def test_each_variant_labels_the_shipped_photos(name):
    # Every weight tensor lands in a layer of the right shape, or set_weights fails; the labels show the wiring.
    variant = efficientnet_lite.VARIANTS[name]
    classifier = efficientnet_lite.pretrained(variant, include_top=True)
    assert _top1(classifier, skimage.data.chelsea(), variant.input_size) in CATS
    assert _top1(classifier, skimage.data.coffee(), variant.input_size) in COFFEE


@pytest.mark.parametrize(
    ("name", "repeats", "channels"),
    [
        ("efficientnet_lite0", [1, 2, 2, 3, 3, 4, 1], [16, 24, 40, 80, 112, 192, 320]),
        ("efficientnet_lite1", [1, 3, 3, 4, 4, 5, 1], [16, 24, 40, 80, 112, 192, 320]),
        ("efficientnet_lite2", [1, 3, 3, 4, 4, 5, 1], [16, 24, 48, 88, 120, 208, 352]),
    ],
)
def test_the_state_dict_holds_the_blocks_of_the_scaled_stages(name, repeats, channels):
    variant = efficientnet_lite.VARIANTS[name]
    assert [stage[0] for stage in variant.stages()] == repeats
    assert [stage[4] for stage in variant.stages()] == channels
    state = efficientnet_lite.load_state_dict(variant.weights_path(), variant.sha256)
    assert state["_conv_stem.weight"].shape == (efficientnet_lite.STEM_CHANNELS, 3, 3, 3)
    assert state["_conv_head.weight"].shape == (efficientnet_lite.HEAD_CHANNELS, channels[-1], 1, 1)
    assert f"_blocks.{sum(repeats) - 1}._project_conv.weight" in state
    assert f"_blocks.{sum(repeats)}._project_conv.weight" not in state
    assert not any("_se_" in key for key in state)  # Lite has no squeeze-excite


def test_grid_shape_without_top():
    model = efficientnet_lite.build(LITE0, include_top=False)
    assert tuple(model.output.shape[1:]) == (7, 7, efficientnet_lite.HEAD_CHANNELS)


def test_wrong_checksum_is_refused_before_unpickling(tmp_path):
    impostor = tmp_path / "weights.pth"
    original = LITE0.weights_path().read_bytes()
    impostor.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(ValueError, match="does not match the expected"):
        efficientnet_lite.load_state_dict(impostor, LITE0.sha256)


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_unpickler_refuses_globals_outside_its_whitelist(tmp_path):
    hostile = tmp_path / "hostile.pth"
    with open(hostile, "wb") as stream:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(header, stream)
        pickle.dump(_Exploit(), stream)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global"):
        efficientnet_lite.load_state_dict(hostile, expected_sha256=sha256_of(hostile))
