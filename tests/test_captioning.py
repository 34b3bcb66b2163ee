"""The model directory (captioner.captioning): the card round-trips the decoder spec; older cards fail clearly."""

import json

import pytest

from captioner import CaptionerError
from captioner.captioning import CARD_FILE, Trained, read_card, write_card
from captioner.decoder import DecoderSpec
from captioner.text import Vocabulary

ATTRS = {"encoder": "efficientnet_lite0", "weights": "w", "weights_param": "imagenet", "input_size": 224}


def test_the_card_round_trips_the_decoder_spec(tmp_path):
    spec = DecoderSpec("lstm", "attention", units=24, embedding_dim=12, dropout=0.25, attention_units=8,
                       train_embeddings=False)  # fmt: skip
    write_card(tmp_path, ATTRS, Vocabulary(["a", "dog"], 5), spec, finetune_from=None)
    card = read_card(tmp_path)
    assert DecoderSpec.from_card(card, "card") == spec
    assert card["decoder"] == {"rnn": "lstm", "arch": "attention", "units": 24, "embedding_dim": 12, "dropout": 0.25,
                               "attention_units": 8, "train_embeddings": False}  # fmt: skip
    assert spec.reads_grid and spec.num_states == 2 and "pooling" not in card


def test_a_spec_from_the_decoder_params_leaves_out_what_only_training_reads():
    params = {"rnn": "gru", "arch": "inject", "units": 512, "embedding_dim": 256, "dropout": 0.3, "attention_reg": 1.0,
              "embeddings": "learned", "train_embeddings": True, "attention_units": 256}  # fmt: skip
    assert DecoderSpec.from_params(params) == DecoderSpec("gru", "inject", 512, 256, 0.3, 256, True)
    assert not DecoderSpec.from_params(params).reads_grid


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
