"""The encoder registry (captioner.features.encoders): every entry builds, at its registered shape."""

import h5py
import pytest

from captioner import CaptionerError
from captioner.features import encoders
from captioner.features import extraction as features


def test_seed_input_sizes():
    sizes = {name: encoder.input_size for name, encoder in encoders.REGISTRY.items()}
    assert sizes["vgg16"] == 224 and sizes["resnet152"] == 448 and sizes["efficientnetb7"] == 600
    assert {f"efficientnetb{b}" for b in range(8)} | {"resnet50", "inception_v3", "mobilenet_v2"} <= set(sizes)


@pytest.mark.parametrize("name", sorted(encoders.REGISTRY))
def test_every_encoder_builds_at_its_registered_input_size_and_grid(name):
    encoder = encoders.get(name)  # building is enough: running the largest (B7 at 600 px) took 27 s a test
    model = encoder.build("imagenet" if name == "efficientnet_lite0" else "none")  # Lite0's real weights are offline
    assert tuple(model.input_shape[1:]) == (encoder.input_size, encoder.input_size, 3)
    assert tuple(model.output_shape[1:]) == (encoder.grid, encoder.grid, encoder.channels)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenet_v2"])  # the shipped weights, a Keras application
def test_an_encoder_writes_features_of_its_registered_shape(name, shapes_raw, tmp_path):
    encoder = encoders.get(name)
    weights = "imagenet" if name == "efficientnet_lite0" else "none"  # Lite0's real weights are offline
    paths = sorted((shapes_raw / "Flicker8k_Dataset").iterdir())[:2]
    skipped = features.extract(encoder, paths, tmp_path / "f.h5", pooling="grid", batch_size=2, weights=weights)
    assert skipped == []
    with h5py.File(tmp_path / "f.h5") as store:
        assert store["features"].shape == (2, encoder.grid, encoder.grid, encoder.channels)
        assert store.attrs["input_size"] == encoder.input_size
        assert store.attrs["weights"].startswith(weights)


def test_image_size_override_changes_the_grid(shapes_raw, tmp_path):
    paths = sorted((shapes_raw / "Flicker8k_Dataset").iterdir())[:1]
    lite0 = encoders.get("efficientnet_lite0")
    features.extract(lite0, paths, tmp_path / "f.h5", pooling="grid", batch_size=1, image_size=320)
    with h5py.File(tmp_path / "f.h5") as store:
        assert store["features"].shape == (1, 10, 10, 1280) and store.attrs["input_size"] == 320


def test_offline_imagenet_fails_with_one_sentence_saying_what_to_do(monkeypatch):
    import keras.src.utils.file_utils as file_utils

    def offline(*args, **kwargs):  # what keras.utils.get_file raises when the host cannot be reached
        raise Exception("URL fetch failure on https://storage.googleapis.com/x.h5: None -- [Errno -3] name resolution")

    monkeypatch.setattr(file_utils, "urlretrieve", offline)
    monkeypatch.setenv("KERAS_HOME", "/nonexistent-keras-home")  # no cached weights either
    with pytest.raises(CaptionerError) as caught:
        encoders.get("vgg16").build("imagenet")
    message = str(caught.value)
    assert "\n" not in message and "ImageNet weights of vgg16" in message
    assert "features.weights" in message and "none" in message and "efficientnet_lite0/1/2" in message


def test_weights_from_a_keras_file_and_bad_weights_values(tmp_path):
    encoder = encoders.get("mobilenet_v2")
    model = encoder.build("none", 96)
    model.save_weights(tmp_path / "mine.weights.h5")
    loaded = encoder.build(str(tmp_path / "mine.weights.h5"), 96)
    assert all((a == b).all() for a, b in zip(model.get_weights(), loaded.get_weights(), strict=True))
    assert "mine.weights.h5 sha256:" in encoder.weights_identity(str(tmp_path / "mine.weights.h5"))
    with pytest.raises(CaptionerError, match="neither imagenet, none, nor an existing file"):
        encoder.build("imagenet21k")
    (tmp_path / "junk.weights.h5").write_text("junk")
    with pytest.raises(CaptionerError, match="junk.weights.h5: not Keras weights for mobilenet_v2"):
        encoder.build(str(tmp_path / "junk.weights.h5"), 96)
