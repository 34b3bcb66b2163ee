"""The Transformer decoder (captioner.model.transformer, captioner.model.decoder.Transformer): its cached steps are its
whole forward, it is causal, it learns over the grid, and its limits fail with one line. The architecture-generic tests
(test_decoder, test_decoding, test_teacher_forcing, test_ensemble, test_trainer) run it beside the others."""

import keras
import numpy as np
import pytest

from captioner import CaptionerError
from captioner.model import checkpoint, decoder, decoding
from captioner.model.decoder import Stepper
from captioner.model.spec import DecoderSpec
from captioner.model.transformer import sinusoids
from captioner.training.trainer import Trainer
from tests.conftest import teacher_forced_fit, toy_batches, toy_config, toy_problem

SMALL = {"units": 32, "embedding_dim": 32, "dropout": 0.1, "heads": 4, "ff_units": 64, "context": 12}
VARIANTS = {  # what changes the wiring: grid or one cell, tied or not, the embedding resized or not, positions
    "grid, learned": ({}, (5, 24)),
    "pooled, tied": ({"tie_embeddings": True}, (24,)),
    "grid, tied, resized, sinusoidal": (
        {"tie_embeddings": True, "embedding_dim": 16, "positions": "sinusoidal"},
        (5, 24),
    ),
    "pooled, resized, 3 blocks": ({"embedding_dim": 8, "layers": 3}, (24,)),
}


def built(settings: dict, feature_shape: tuple, vocab_size: int = 20) -> decoder.Architecture:
    spec = DecoderSpec("gru", "transformer", **(SMALL | settings))
    architecture = decoder.architecture(spec, vocab_size)
    architecture.build(feature_shape)
    return architecture


@pytest.mark.parametrize("variant", VARIANTS)
def test_decoding_step_by_step_over_the_cache_gives_the_whole_captions_logits(variant):
    settings, shape = VARIANTS[variant]
    keras.utils.set_random_seed(0)
    architecture = built(settings, shape)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(3, *shape)).astype(np.float32)
    tokens = rng.integers(1, 20, size=(3, 11)).astype(np.int32)
    whole = architecture.model([features, tokens])["logits"].numpy()
    stepper, steps = Stepper(architecture), []
    states = stepper.start(features, tokens.shape[1])  # a cache of the positions decoded, not the context
    for position in range(tokens.shape[1]):
        logits, states, attention = stepper.step(tokens[:, position], states)
        steps.append(logits.numpy())
    np.testing.assert_allclose(np.stack(steps, axis=1), whole, atol=2e-5)
    assert stepper.reads_grid == stepper.attends == (len(shape) == 2)  # weights over the cells of a grid
    if stepper.attends:
        np.testing.assert_allclose(np.sum(attention, axis=-1), 1.0, rtol=1e-5)


def test_the_cache_holds_the_positions_decoded_up_to_the_context():
    architecture = built({}, (24,))
    features = np.zeros((2, 24), np.float32)
    for length, positions in ((5, 5), (12, 12), (1000, 12)):  # SMALL's context: 12
        _, keys, values, *_ = Stepper(architecture).start(features, length)
        assert keys.shape == values.shape == (2, positions, SMALL["units"])


def test_a_position_sees_only_the_words_before_it():
    keras.utils.set_random_seed(0)
    architecture = built({}, (5, 24))
    rng = np.random.default_rng(1)
    features = rng.normal(size=(2, 5, 24)).astype(np.float32)
    tokens = rng.integers(1, 20, size=(2, 8)).astype(np.int32)
    changed = tokens.copy()
    changed[:, 5:] = (changed[:, 5:] + 1) % 19 + 1
    before, after = (architecture.model([features, words])["logits"].numpy() for words in (tokens, changed))
    np.testing.assert_allclose(before[:, :5], after[:, :5], atol=1e-6)
    assert np.abs(before[:, 5:] - after[:, 5:]).min() > 0


def test_sinusoidal_positions_are_the_papers():
    table = sinusoids(50, 16)
    position, pair = 7, 3
    np.testing.assert_allclose(table[position, 2 * pair], np.sin(position / 10000 ** (2 * pair / 16)), rtol=1e-6)
    np.testing.assert_allclose(table[position, 2 * pair + 1], np.cos(position / 10000 ** (2 * pair / 16)), rtol=1e-6)


def test_a_transformer_trained_on_the_grid_captions_its_training_images_and_reloads(tmp_path):
    """The toy captions name the channel that peaks over the grid: learnt through the cross-attention."""
    features, captions, vocab = toy_problem()
    keras.utils.set_random_seed(0)
    spec = DecoderSpec("gru", "transformer", **SMALL | {"dropout": 0.0})
    architecture = decoder.architecture(spec, len(vocab))
    architecture.build(features.shape[1:])
    data = toy_batches(features, captions, vocab, "attention")  # "attention": the batches hold the grid
    trainer = Trainer(architecture.model, architecture.head, toy_config("transformer", learning_rate=0.003))
    teacher_forced_fit(trainer, data, data, epochs=25, patience=25)
    attrs = {"encoder": "toy", "weights": "w", "weights_param": "imagenet", "input_size": 96}
    checkpoint.save(tmp_path, architecture.model, attrs, vocab, spec)
    loaded = checkpoint.Trained.load(tmp_path)
    assert loaded.spec == spec and loaded.reads_grid
    ids = decoding.greedy(Stepper(loaded.architecture), features.__getitem__, np.arange(len(features)), 6).ids
    words = [vocab.decode(row) for row in ids]
    assert np.mean([found == expected[1:-1] for found, (_, expected) in zip(words, captions, strict=True)]) > 0.9


def test_the_card_keeps_the_transformers_fields_and_leaves_them_out_of_a_recurrent_decoders():
    transformer = DecoderSpec("gru", "transformer", **SMALL)
    assert {"layers", "heads", "context"} <= set(transformer.card())
    recurrent = DecoderSpec("gru", "inject", 512, 256, 0.3)
    assert not {"layers", "heads", "ff_units", "positions", "tie_embeddings", "context"} & set(recurrent.card())
    assert DecoderSpec.from_card({"decoder": recurrent.card()}, "card") == recurrent
    assert DecoderSpec.from_card({"decoder": transformer.card()}, "card") == transformer
    lacking = {key: value for key, value in transformer.card().items() if key != "heads"}
    with pytest.raises(CaptionerError, match="the decoder spec lacks heads"):
        DecoderSpec.from_card({"decoder": lacking}, "card")
    with pytest.raises(CaptionerError, match="must be a multiple of decoder.heads 5"):
        DecoderSpec.from_card({"decoder": transformer.card() | {"heads": 5}}, "card")


def test_decoding_or_training_past_the_context_fails_with_one_line():
    keras.utils.set_random_seed(0)
    stepper = Stepper(built({}, (24,)))
    features = np.zeros((2, 24), np.float32)
    with pytest.raises(CaptionerError, match=r"max_len 13 is more tokens than the transformer's 12 positions"):
        decoding.greedy(stepper, features.__getitem__, np.arange(2), max_len=13)
    assert decoding.greedy(stepper, features.__getitem__, np.arange(2), max_len=12).ids.shape == (2, 12)
    spec = DecoderSpec("gru", "transformer", **SMALL)
    spec.check_fits(13)  # 12 positions read: the caption but its last token
    with pytest.raises(CaptionerError, match="vocab.max_length 14 needs 13 positions, more than decoder.context 12"):
        spec.check_fits(14)


def test_the_matmul_flops_count_each_kernel_a_token_or_a_caption_passes_through():
    """For bench/train_speed.py's FLOP/s: pooled features (one cell, so no cross-attention query or scores)."""
    architecture = built({}, (24,))  # width 32, feed-forward 64, 2 blocks, untied, vocabulary 20
    per_token, per_caption = architecture.matmul_flops((24,))
    block = 32 * 96 + 32 * 32 + 32 * 32 + 32 * 64 + 64 * 32  # qkv, self out, cross out, feed-forward in and out
    assert per_token == 2 * (2 * block + 32 * 20)
    assert per_caption == 2 * (24 * 32 + 2 * 32 * 64)  # the image projection, each block's cross keys and values
