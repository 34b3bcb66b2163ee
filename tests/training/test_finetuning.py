"""Fine-tuning the encoder jointly with the decoder (captioner.training.finetuning), down to captioning with the
result."""

import keras
import numpy as np
import pytest

from captioner import CaptionerError
from captioner.captioning import Captioner
from captioner.datasets import clean_release
from captioner.features import encoders
from captioner.features import extraction as features
from captioner.features.extraction import load_image
from captioner.model import decoder
from captioner.model.checkpoint import write_card
from captioner.model.spec import DecoderSpec
from captioner.text import Vocabulary
from captioner.training import batching, finetuning
from captioner.training.trainer import Trainer
from tests.conftest import teacher_forced_fit, toy_config

LITE0, SIZE, LAST_BLOCK = encoders.get("efficientnet_lite0"), 64, "_blocks.15._expand_conv"


@pytest.mark.parametrize(
    "layer, reason",
    [
        ("conv5_block1_out", "'conv5_block1_out' is not a layer of efficientnet_lite0"),
        ("_blocks.14._depthwise_conv", "'_blocks.14._depthwise_conv' splits a residual block of efficientnet_lite0"),
    ],
)
def test_a_layer_that_cannot_start_fine_tuning_fails_with_one_line_naming_valid_ones(layer, reason):
    with pytest.raises(CaptionerError) as error:
        finetuning.finetunable_encoder(LITE0, "none", SIZE, "avg", layer)
    message = str(error.value)
    assert reason in message and "_conv_head" in message
    assert "\n" not in message


def test_layers_before_the_named_one_stay_frozen():
    split = finetuning.finetunable_encoder(LITE0, "none", SIZE, "avg", LAST_BLOCK)
    backbone = split.full.layers[1]
    names = [layer.name for layer in backbone.layers]
    first = names.index(LAST_BLOCK)
    assert not any(layer.trainable_weights for layer in backbone.layers[:first])
    assert all(layer.trainable != ("_bn" in layer.name) for layer in backbone.layers[first:])
    trained = {v.path.split("/")[0] for v in split.full.trainable_variables}
    assert {LAST_BLOCK, "_blocks.15._project_conv", "_conv_head"} <= trained
    assert not any("_bn" in name for name in trained)  # BatchNorm stays frozen, in inference mode
    # Training steps the trainable part; the saved whole must hold those very variables.
    assert {id(v) for v in split.trainable.trainable_variables} == {id(v) for v in split.full.trainable_variables}
    assert not split.frozen.trainable_variables


@pytest.mark.parametrize("block", [LAST_BLOCK, "_blocks.14._expand_conv"])  # a plain block, a residual one
def test_the_frozen_then_the_trainable_part_compute_the_whole_encoder(block):
    split = finetuning.finetunable_encoder(LITE0, "imagenet", SIZE, "grid", block)
    images = np.random.default_rng(0).uniform(-1, 1, (2, SIZE, SIZE, 3)).astype("float32")
    activations = split.frozen(images)
    assert activations.shape[-1] == 192  # what enters block 14 and block 15 of Lite0
    np.testing.assert_allclose(split.trainable(activations), split.full(images), atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 5), (3, 4, 5)])
def test_per_caption_repeats_each_image_for_its_captions_in_order(shape):
    features = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    layer = decoder.PerCaption(2)
    np.testing.assert_array_equal(layer(features), np.repeat(features, 2, axis=0))
    assert layer.compute_output_shape((None, *shape[1:])) == (None, *shape[1:])
    assert decoder.PerCaption.from_config(layer.get_config()).captions_per_image == 2


def test_finetuning_trains_the_unfrozen_layers_on_activations_computed_once_and_the_saved_model_captions(
    shapes_raw, tmp_path, capfd
):
    keras.utils.set_random_seed(0)
    captions = clean_release(shapes_raw).captions["train"]
    vocab = Vocabulary.build([tokens for _, tokens in captions], min_count=1, max_length=60)
    images = shapes_raw / "Flicker8k_Dataset"
    names = sorted({image for image, _ in captions})
    features.extract(LITE0, [images / name for name in names], tmp_path / "lite0.h5", "avg", 8, "imagenet", SIZE)
    split = finetuning.finetunable_encoder(LITE0, "imagenet", SIZE, "avg", LAST_BLOCK)
    spec = DecoderSpec("gru", "inject", units=16, embedding_dim=8, dropout=0.0)
    architecture = decoder.architecture(spec, len(vocab))
    decoder_model = architecture.build((1280,))
    with (
        features.FeatureFile(tmp_path / "lite0.h5", LITE0.name) as cached,
        finetuning.frozen_activations(split, cached, LITE0, images, list(cached.row_of.values()), 8) as activations,
    ):
        rows, sequences, _ = batching.encode_captions(captions, cached.row_of, vocab)
        batches, per_image = finetuning.image_caption_batches(
            {"train": (rows, sequences)}, cached, activations, 20, {"train": 0}
        )
        data = batches["train"]
        assert per_image == 5 and len(data) == -(-len(names) // 4)  # 20 captions a step: 4 images
        image = load_image(str(images / names[0]), SIZE, LITE0.preprocess).numpy()[None]
        first = activations.row_of[names[0]]
        stored = finetuning.activations_reader(activations)(np.array([first]))
        np.testing.assert_allclose(stored, split.frozen(image), atol=0.02, rtol=2e-3)  # float16 on disk

        model = finetuning.joint_model(split.trainable, decoder_model, per_image)
        frozen_before = [v.numpy().copy() for v in split.full.non_trainable_variables]
        tuned_before = [v.numpy().copy() for v in split.full.trainable_variables]
        trainer = Trainer(model, architecture.head, toy_config(learning_rate=0.01, encoder_lr=0.001))
        assert [float(o.learning_rate.numpy()) for o in trainer.optimizers] == pytest.approx([0.01, 0.001])
        capfd.readouterr()
        summary = teacher_forced_fit(trainer, data, data, epochs=2, patience=2)
        assert np.isfinite(summary["best_dev_loss"])
        assert "oneDNN" not in capfd.readouterr().err  # a repeat's gradient logged a DT_INT32 "error" here
        # Frozen layers and every BatchNorm's moving statistics are untouched; the unfrozen layers moved.
        assert all(
            np.array_equal(a, v.numpy()) for a, v in zip(frozen_before, split.full.non_trainable_variables, strict=True)
        )
        assert any(
            not np.array_equal(a, v.numpy()) for a, v in zip(tuned_before, split.full.trainable_variables, strict=True)
        )
        # Dev scores during training see the encoder as trained so far, without a pass over the images.
        dev_features = finetuning.features_reader(split.trainable, activations)(np.array([first]))
        np.testing.assert_allclose(dev_features, split.full(image), atol=0.02, rtol=2e-3)

    directory = tmp_path / "models"
    directory.mkdir()
    saved = finetuning.joint_model(split.full, decoder_model, per_image)
    saved.save(directory / "captioner.keras")
    attrs = {"encoder": LITE0.name, "weights": "w", "weights_param": "imagenet", "input_size": SIZE, "pooling": "avg"}
    write_card(directory, attrs, vocab, spec, {"finetune_from": LAST_BLOCK})
    reloaded = keras.saving.load_model(directory / "captioner.keras", safe_mode=True)
    tokens = np.array([vocab.encode(captions[0][1])] * per_image, dtype=np.int32)
    np.testing.assert_allclose(saved([image, tokens])["logits"], reloaded([image, tokens])["logits"], atol=1e-5)

    captioner = Captioner.load(directory)
    tuned = captioner.extractor.model.trainable_variables  # the caption command's encoder is the fine-tuned one
    assert all(np.array_equal(v.numpy(), w.numpy()) for v, w in zip(tuned, split.full.trainable_variables, strict=True))
    (result,) = captioner.caption([images / names[0]], beam_size=2)
    assert result.error is None and len(result.text.split()) >= 1 and result.log_prob < 0


def test_an_image_that_no_longer_decodes_fails_with_one_line_naming_it(shapes_raw, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((shapes_raw / "Flicker8k_Dataset").iterdir())[:3]:
        (images / path.name).write_bytes(path.read_bytes())
    names = sorted(path.name for path in images.iterdir())
    features.extract(LITE0, [images / name for name in names], tmp_path / "lite0.h5", "avg", 8, "none", SIZE)
    (images / names[1]).write_bytes(b"not an image")
    split = finetuning.finetunable_encoder(LITE0, "none", SIZE, "avg", LAST_BLOCK)
    with features.FeatureFile(tmp_path / "lite0.h5", LITE0.name) as cached, pytest.raises(CaptionerError) as error:
        with finetuning.frozen_activations(split, cached, LITE0, images, [0, 1, 2], 8):
            pass
    assert str(error.value) == f"{names[1]} no longer decodes, though {tmp_path / 'lite0.h5'} holds its features"
