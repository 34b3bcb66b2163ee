"""Lite0 built in Keras from the offline torch pickle (captioner.efficientnet_lite)."""

import pickle

import numpy as np
import pytest
import skimage.data

from captioner import efficientnet_lite
from captioner.stage import sha256_of

# ImageNet class ids: 281 tabby, 282 tiger cat, 285 Egyptian cat; 967 espresso, 968 cup, 504 coffee mug.
CATS, COFFEE = {281, 282, 283, 284, 285}, {967, 968, 504}


@pytest.fixture(scope="module")
def classifier():
    return efficientnet_lite.pretrained(include_top=True)


def _top1(model, image: np.ndarray) -> int:
    import tensorflow as tf

    resized = tf.image.resize(image[None].astype("float32"), (224, 224), antialias=True)
    return int(np.argmax(model.predict(efficientnet_lite.preprocess(resized), verbose=0)[0]))


def test_classifier_labels_shipped_photos(classifier):
    assert _top1(classifier, skimage.data.chelsea()) in CATS
    assert _top1(classifier, skimage.data.coffee()) in COFFEE


def test_state_dict_has_every_lite0_tensor():
    state = efficientnet_lite.load_state_dict(efficientnet_lite.default_weights_path())
    assert state["_conv_stem.weight"].shape == (efficientnet_lite.STEM_CHANNELS, 3, 3, 3)
    assert state["_conv_head.weight"].shape == (efficientnet_lite.HEAD_CHANNELS, 320, 1, 1)
    assert f"_blocks.{efficientnet_lite.NUM_BLOCKS - 1}._project_conv.weight" in state
    assert f"_blocks.{efficientnet_lite.NUM_BLOCKS}._project_conv.weight" not in state
    assert not any("_se_" in key for key in state)  # Lite has no squeeze-excite


def test_grid_shape_without_top():
    model = efficientnet_lite.build(include_top=False)
    assert tuple(model.output.shape[1:]) == (7, 7, efficientnet_lite.HEAD_CHANNELS)


def test_wrong_checksum_is_refused_before_unpickling(tmp_path):
    impostor = tmp_path / "weights.pth"
    original = efficientnet_lite.default_weights_path().read_bytes()
    impostor.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(ValueError, match="does not match the expected"):
        efficientnet_lite.load_state_dict(impostor)


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
