"""The model directory (captioner.model.checkpoint): the card round-trips the decoder spec and the training config;
older cards fail clearly."""

import json

import pytest

from captioner import CaptionerError
from captioner.model.checkpoint import CARD_FILE, Trained, read_card, write_card
from captioner.model.spec import DecoderSpec
from captioner.text import Vocabulary
from tests.conftest import toy_config

ATTRS = {"encoder": "efficientnet_lite0", "weights": "w", "weights_param": "imagenet", "input_size": 224}


def test_the_card_round_trips_the_decoder_spec_and_records_the_training_config(tmp_path):
    spec = DecoderSpec("lstm", "attention", 24, 12, dropout=0.25, attention_units=8, train_embeddings=False)
    config = toy_config("attention", finetune_from="top_conv", learning_rate=0.002)
    write_card(tmp_path, ATTRS, Vocabulary(["a", "dog"], 5), spec, config.card())
    card = read_card(tmp_path)
    assert DecoderSpec.from_card(card, "card") == spec
    expected = {"rnn": "lstm", "arch": "attention", "units": 24, "embedding_dim": 12, "dropout": 0.25}
    assert card["decoder"] == expected | {"attention_units": 8, "train_embeddings": False}
    assert spec.reads_grid("avg") and spec.num_states == 2 and "pooling" not in card
    assert card["training"]["learning_rate"] == 0.002 and "decoder" not in card["training"]
    assert (card["dataset"], card["finetune_from"]) == ("shapes", "top_conv")
    write_card(tmp_path, ATTRS, Vocabulary(["a", "dog"], 5), spec)  # trained outside the train stage
    assert read_card(tmp_path)["training"] is None


def test_a_spec_from_the_decoder_params_leaves_out_what_only_training_reads():
    params = {"rnn": "gru", "arch": "inject", "units": 512, "embedding_dim": 256, "dropout": 0.3}
    params |= {"attention_reg": 1.0, "embeddings": "learned", "train_embeddings": True, "attention_units": 256}
    params |= {
        "layers": 2,
        "heads": 8,
        "ff_units": 2048,
        "positions": "learned",
        "tie_embeddings": False,
        "context": 64,
    }
    assert DecoderSpec.from_params(params) == DecoderSpec("gru", "inject", 512, 256, 0.3, 256, True)
    assert not DecoderSpec.from_params(params).reads_grid("avg")


def test_a_model_saved_before_the_decoder_spec_fails_with_one_line_naming_what_is_missing(tmp_path):
    old_card = {**ATTRS, "pooling": "avg", "finetune_from": None, "vocabulary": ["a"], "max_length": 5}
    (tmp_path / CARD_FILE).write_text(json.dumps(old_card))
    with pytest.raises(CaptionerError) as caught:
        Trained.load(tmp_path)
    assert (
        str(caught.value)
        == f"{tmp_path / CARD_FILE} has no decoder spec (saved by an earlier version); retrain: dvc repro"
    )
    partial = {**old_card, "decoder": {"rnn": "gru", "arch": "inject", "units": 8, "embedding_dim": 4}}
    (tmp_path / CARD_FILE).write_text(json.dumps(partial))
    with pytest.raises(CaptionerError, match=r"the decoder spec lacks dropout, attention_units, train_embeddings"):
        Trained.load(tmp_path)
