"""Training's modes run by the stage scripts in this process, on a copy of the tiny project (``tiny``: features
extracted and a model trained once per test process): attention over the grid, fine-tuning, self-critical training
and an ensemble member, each followed by what reads its model (evaluate, caption). Which stages DVC reruns for
these params: tests/test_pipeline.py."""

import json

import pytest

from captioner.captioning import Captioner
from tests.conftest import run_stage, run_stages, set_params
from tests.tiny_pipeline import assert_selected_by_dev_bleu4

pytestmark = pytest.mark.e2e  # `pytest -m "not e2e"` runs the unit tests alone
BY_DEV_BLEU4 = {"select_by": "dev_bleu4"}


def test_attention_over_the_grid_trains_selects_by_dev_bleu4_and_draws_its_attention(tiny):
    set_params(tiny, decoder={"arch": "attention"}, features={"pooling": "grid"}, train=BY_DEV_BLEU4)
    output = run_stages(tiny, "extract_features", "train", "evaluate")
    assert "test_images 8" in output
    assert_selected_by_dev_bleu4(tiny)
    figures = sorted(p.name for p in (tiny / "metrics" / "figures").iterdir())
    assert figures == ["attention_1.png", "attention_2.png", "attention_3.png", "cosine_similarity.png", "samples.png"]


def test_attention_on_pooled_features_fails_with_one_clear_line_saving_nothing(tiny):
    before = (tiny / "models" / "captioner.keras").read_bytes()
    set_params(tiny, decoder={"arch": "attention"}, features={"pooling": "avg"})
    result = run_stage(tiny, "train")
    assert result.returncode == 1
    assert (
        "error: attention needs the feature grid" in result.stderr and "set features.pooling to grid" in result.stderr
    )
    assert (tiny / "models" / "captioner.keras").read_bytes() == before


def test_a_model_that_cannot_be_saved_leaves_every_output_of_the_last_run_in_place(tiny, monkeypatch):
    from captioner import CaptionerError
    from captioner.training import train as training

    log = tiny / "metrics" / "train"
    (log / ".gitignore").write_text("/plots\n")  # DVC's, tracked by git
    before = {path: path.read_bytes() for path in [*log.rglob("*"), *(tiny / "models").iterdir()] if path.is_file()}

    def full_disk(directory, *args):
        raise CaptionerError(f"{directory}: No space left on device (while writing {directory})")

    monkeypatch.setattr(training, "save", full_disk)
    set_params(tiny, train={"epochs": 2})
    result = run_stage(tiny, "train")
    assert result.returncode == 1 and "No space left on device" in result.stderr
    after = {path: path.read_bytes() for path in [*log.rglob("*"), *(tiny / "models").iterdir()] if path.is_file()}
    assert after == before  # the curves, the summary, DVC's .gitignore and the model, byte for byte


def test_an_evaluate_that_fails_drawing_writes_no_scores_captions_or_figures(tiny, monkeypatch):
    from captioner import CaptionerError
    from captioner.evaluation import figures

    def full_disk(*args):
        raise CaptionerError("metrics/figures/cosine_similarity.png: No space left on device")

    monkeypatch.setattr(figures, "histogram", full_disk)  # the second figure: the first is drawn by then
    result = run_stage(tiny, "evaluate")
    assert result.returncode == 1 and "No space left on device" in result.stderr
    assert not (tiny / "metrics" / "scores.json").exists() and not (tiny / "metrics" / "test_captions.tsv").exists()
    assert not (tiny / "metrics" / "figures").exists()


def test_finetuning_trains_through_the_encoder_and_its_scores_and_card_record_it(tiny):
    block = "_blocks.15._expand_conv"
    set_params(tiny, train={"finetune_from": block, **BY_DEV_BLEU4})
    output = run_stages(tiny, "train", "evaluate")
    assert f"fine-tuning efficientnet_lite0 from layer {block}" in output
    assert_selected_by_dev_bleu4(tiny)  # dev features recomputed by the encoder as it trains
    assert json.loads((tiny / "metrics" / "scores.json").read_text())["finetune_from"] == block
    assert json.loads((tiny / "models" / "captioner.json").read_text())["finetune_from"] == block
    set_params(tiny, train={"finetune_from": "conv5_block1_out"})
    bad = run_stage(tiny, "train")
    assert bad.returncode == 1
    assert "error: train.finetune_from 'conv5_block1_out' is not a layer of efficientnet_lite0" in bad.stderr


def test_self_critical_training_follows_teacher_forcing_kept_by_dev_cider(tiny):
    set_params(tiny, train={"select_by": "dev_cider", "self_critical_epochs": 2})
    output = run_stages(tiny, "train")
    assert "self-critical epoch 2: mean sampled CIDEr-D" in output and ", dev CIDEr-D " in output
    summary = json.loads((tiny / "metrics" / "train" / "metrics.json").read_text())
    plots = tiny / "metrics" / "train" / "plots" / "metrics" / "by_epoch"
    rewards = (plots / "self_critical_reward.tsv").read_text().splitlines()[1:]
    scores = [float(line.split("\t")[1]) for line in (plots / "dev_cider.tsv").read_text().splitlines()[1:]]
    assert summary["self_critical_epochs_run"] == len(rewards) == 2
    bleu4 = (plots / "dev_bleu4.tsv").read_text().splitlines()[1:]  # logged beside, not deciding
    # Teacher-forced epochs, then the self-critical ones, all kept by dev CIDEr-D: the best of them is the model's.
    assert len(scores) == len(bleu4) == summary["epochs_run"] + 2
    assert summary["best_dev_cider"] == pytest.approx(max(scores), abs=5e-5)


@pytest.mark.parametrize(
    ("train", "error"),
    [
        ({"finetune_from": "_blocks.15._expand_conv"}, "train.self_critical_epochs needs a frozen encoder"),
        ({"self_critical_samples": 1}, "train.self_critical_samples is 1: each"),
    ],
)
def test_self_critical_settings_that_cannot_work_are_refused_before_training(tiny, train, error):
    set_params(tiny, train={"self_critical_epochs": 2, **train})
    result = run_stage(tiny, "train")
    assert result.returncode == 1 and f"error: {error}" in result.stderr
    assert "train: epoch 1" not in result.stdout  # refused before any training


def test_a_transformer_member_trains_alone_and_evaluate_and_caption_decode_with_both(tiny):
    member = {"decoder": {"arch": "transformer", "heads": 4, "ff_units": 32}, "train": {"seed": 2}}
    set_params(tiny, ensemble={"second": member})
    before = (tiny / "models" / "captioner.keras").read_bytes()
    run_stages(tiny, "train --member second", "evaluate")
    assert (tiny / "models" / "captioner.keras").read_bytes() == before  # the main model untouched
    assert json.loads((tiny / "ensemble" / "second" / "captioner.json").read_text())["decoder"]["layers"] == 2
    assert json.loads((tiny / "metrics" / "scores.json").read_text())["ensemble_members"] == 2
    image = next((tiny / "data" / "raw" / "Flicker8k_Dataset").iterdir())
    (result,) = Captioner.load(tiny / "models", [tiny / "ensemble" / "second"]).caption([image])
    assert result.error is None and result.text and result.log_prob < 0
    set_params(tiny, ensemble={"second": {"features": {"pooling": "grid"}}})
    refused = run_stage(tiny, "evaluate")
    assert refused.returncode == 1 and refused.stderr.startswith("error: ensemble.second is {'features'")
