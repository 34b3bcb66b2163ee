"""The training config (captioner.training.config): built from the train stage's params once, checked once."""

import dataclasses

import pytest

from captioner import CaptionerError
from captioner.stage import declared_params
from captioner.training.config import TrainConfig
from tests.conftest import PROJECT


def test_the_train_stage_params_make_a_config_with_the_members_overrides(tmp_path):
    params = declared_params("train", PROJECT)
    config = TrainConfig.from_params(params)
    assert config.decoder.arch == params["decoder"]["arch"] and config.member is None
    assert config.learning_rate == params["train"]["learning_rate"] and config.selection_score is None
    assert config.self_critical_score == "bleu4" and not config.scores_dev
    member = params.merged({"ensemble": {"attend": {"decoder": {"arch": "attention"}, "train": {"seed": 3}}}})
    config = TrainConfig.from_params(member)
    assert (config.member, config.decoder.arch, config.seed) == ("attend", "attention", 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 4


def test_self_critical_epochs_with_a_fine_tuned_encoder_are_refused_before_any_work():
    params = declared_params("train", PROJECT)
    params["train"].update({"self_critical_epochs": 2, "finetune_from": "top_conv"})
    with pytest.raises(CaptionerError, match="train.self_critical_epochs needs a frozen encoder"):
        TrainConfig.from_params(params)
    params["train"].update({"finetune_from": None, "select_by": "dev_cider"})
    config = TrainConfig.from_params(params)
    assert config.selection_score == config.self_critical_score == "cider" and config.scores_dev
