"""Fine-tuning the encoder jointly with the decoder (captioner.finetuning), down to captioning with the result."""

import keras
import numpy as np
import pytest

from captioner import decoder, encoders, finetuning, training
from captioner.captioning import Captioner, write_card
from captioner.datasets import clean_release
from captioner.stage import StageError
from captioner.text import Vocabulary
from tests.test_training import NullLive

LITE0, SIZE, LAST_BLOCK = encoders.get("efficientnet_lite0"), 64, "_blocks.15._expand_conv"


def test_an_unknown_layer_fails_with_one_line_naming_valid_ones():
    with pytest.raises(StageError) as error:
        finetuning.finetunable_encoder(LITE0, "none", SIZE, "avg", "conv5_block1_out")
    message = str(error.value)
    assert "'conv5_block1_out' is not a layer of efficientnet_lite0" in message and "_conv_head" in message
    assert "\n" not in message


def test_layers_before_the_named_one_stay_frozen():
    model = finetuning.finetunable_encoder(LITE0, "none", SIZE, "avg", LAST_BLOCK)
    backbone = model.layers[1]
    names = [layer.name for layer in backbone.layers]
    first = names.index(LAST_BLOCK)
    assert not any(layer.trainable_weights for layer in backbone.layers[:first])
    assert all(layer.trainable != ("_bn" in layer.name) for layer in backbone.layers[first:])
    trained = {v.path.split("/")[0] for v in model.trainable_variables}
    assert {LAST_BLOCK, "_blocks.15._project_conv", "_conv_head"} <= trained
    assert not any("_bn" in name for name in trained)  # BatchNorm stays frozen, in inference mode


def test_image_batches_hold_every_caption_of_each_image_padded_per_batch(shapes_raw):
    paths = sorted((shapes_raw / "Flicker8k_Dataset").iterdir())[:3]
    sequences = [[[1, 4, 2], [1, 4, 5, 6, 2]], [[1, 5, 2]], [[1, 6, 6, 2]]]
    data = finetuning.image_batches(paths, sequences, SIZE, LITE0.preprocess, 2, images_per_batch=2)
    (images, tokens), (last_images, last_tokens) = list(data)
    assert images.shape == (2, SIZE, SIZE, 3) and last_images.shape == (1, SIZE, SIZE, 3)
    assert tokens.numpy().tolist() == [[1, 4, 2, 0, 0], [1, 4, 5, 6, 2], [1, 5, 2, 0, 0], [0, 0, 0, 0, 0]]
    assert last_tokens.numpy().tolist() == [[1, 6, 6, 2], [0, 0, 0, 0]]


def test_finetuning_trains_the_encoder_and_the_reloaded_model_captions_an_image(shapes_raw, tmp_path):
    keras.utils.set_random_seed(0)
    captions = clean_release(shapes_raw)[0]["train"]
    vocab = Vocabulary.build([tokens for _, tokens in captions], min_count=1, max_length=20)
    names = sorted({image for image, _ in captions})
    rows, sequences, _ = training.encode_captions(captions, {name: i for i, name in enumerate(names)}, vocab)
    image_rows, grouped = finetuning.captions_by_image(rows, sequences)
    per_image = max(map(len, grouped))
    paths = [shapes_raw / "Flicker8k_Dataset" / names[row] for row in image_rows]
    data = finetuning.image_batches(paths, grouped, SIZE, LITE0.preprocess, per_image, images_per_batch=4, seed=0)

    encoder_model = finetuning.finetunable_encoder(LITE0, "imagenet", SIZE, "avg", LAST_BLOCK)
    decoder_model = decoder.build(len(vocab), (1280,), "gru", "inject", units=16, embedding_dim=8, dropout=0.0)
    model = finetuning.joint_model(encoder_model, decoder_model, per_image)
    frozen_before = [v.numpy().copy() for v in encoder_model.non_trainable_variables]
    tuned_before = [v.numpy().copy() for v in encoder_model.trainable_variables]
    trainer = training.Trainer(model, learning_rate=0.01, clipnorm=5.0, encoder_lr=0.001)
    assert [float(o.learning_rate.numpy()) for o in trainer.optimizers] == pytest.approx([0.01, 0.001])
    summary = trainer.fit(data, data, epochs=2, patience=2, live=NullLive())
    assert np.isfinite(summary["best_dev_loss"])
    # Frozen layers and every BatchNorm's moving statistics are untouched; the unfrozen layers moved.
    assert all(
        np.array_equal(a, v.numpy()) for a, v in zip(frozen_before, encoder_model.non_trainable_variables, strict=True)
    )
    assert any(
        not np.array_equal(a, v.numpy()) for a, v in zip(tuned_before, encoder_model.trainable_variables, strict=True)
    )

    directory = tmp_path / "models"
    directory.mkdir()
    model.save(directory / "captioner.keras")
    attrs = {"encoder": LITE0.name, "weights": "w", "weights_param": "imagenet", "input_size": SIZE, "pooling": "avg"}
    write_card(directory, attrs, vocab, LAST_BLOCK)
    reloaded = keras.saving.load_model(directory / "captioner.keras", safe_mode=True)
    images, tokens = next(iter(data))
    np.testing.assert_allclose(model([images, tokens])["logits"], reloaded([images, tokens])["logits"], atol=1e-5)

    captioner = Captioner.load(directory)
    tuned = captioner.extractor.model.trainable_variables  # the caption command's encoder is the fine-tuned one
    assert all(
        np.array_equal(v.numpy(), w.numpy()) for v, w in zip(tuned, encoder_model.trainable_variables, strict=True)
    )
    written, failures = captioner.caption([paths[0]], beam_size=2)
    assert failures == {} and len(written[paths[0]].split()) >= 1
