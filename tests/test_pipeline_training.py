"""End to end, on tiny params in a temporary git repo (as tests/test_pipeline.py): fine-tuning, self-critical
training, a queued sweep and an ensemble member, each through `dvc exp run` or `dvc repro`."""

import json
import re
import subprocess
import sys
import time

import pytest
import yaml

from captioner.report import _flat
from tests.tiny_pipeline import (
    BY_DEV_BLEU4,
    ENVIRONMENT,
    assert_selected_by_dev_bleu4,
    dvc,
    ran,
    run_dvc,
    tracked_changes,
)

pytestmark = pytest.mark.e2e  # `pytest -m "not e2e"` runs the unit tests alone


def test_finetuning_reruns_train_and_evaluate_and_scores_record_it(repo):
    repo, _ = repo
    block = "_blocks.15._expand_conv"
    output = dvc(repo, "exp", "run", "-S", f"train.finetune_from={block}", "-S", "decoder.arch=inject", *BY_DEV_BLEU4)
    assert "train" in ran(output) and "evaluate" in ran(output) and "extract_features" not in ran(output)
    assert f"fine-tuning efficientnet_lite0 from layer {block}" in output
    assert_selected_by_dev_bleu4(repo)  # dev features recomputed by the encoder as it trains
    assert json.loads((repo / "metrics" / "scores.json").read_text())["finetune_from"] == block
    card = json.loads((repo / "models" / "captioner.json").read_text())
    assert card["finetune_from"] == block
    bad = run_dvc(repo, "exp", "run", "-S", "train.finetune_from=conv5_block1_out")
    assert bad.returncode != 0
    assert (
        "error: train.finetune_from 'conv5_block1_out' is not a layer of efficientnet_lite0" in bad.stderr + bad.stdout
    )
    dvc(repo, "exp", "run", "-S", "train.finetune_from=null", "-S", "train.select_by=dev_loss")  # back to defaults


def test_self_critical_training_follows_teacher_forcing_and_refuses_what_it_cannot_do_before_training(repo):
    repo, _ = repo
    pinned = ("-S", "decoder.arch=inject", "-S", "features.pooling=avg", "-S", "train.select_by=dev_loss")
    by_cider = (*pinned[:-1], "train.select_by=dev_cider")
    output = dvc(repo, "exp", "run", *by_cider, "-S", "train.self_critical_epochs=2")
    # evaluate reruns only if a self-critical epoch was kept: the teacher-forced weights save byte-identically
    assert "train" in ran(output) and ran(output) <= {"train", "evaluate", "export"}
    assert "self-critical epoch 2: mean sampled CIDEr-D" in output and ", dev CIDEr-D " in output
    summary = json.loads((repo / "metrics" / "train" / "metrics.json").read_text())
    plots = repo / "metrics" / "train" / "plots" / "metrics" / "by_epoch"
    rewards = (plots / "self_critical_reward.tsv").read_text().splitlines()[1:]
    scores = [float(line.split("\t")[1]) for line in (plots / "dev_cider.tsv").read_text().splitlines()[1:]]
    assert summary["self_critical_epochs_run"] == len(rewards) == 2
    bleu4 = (plots / "dev_bleu4.tsv").read_text().splitlines()[1:]  # logged beside, not deciding
    # Teacher-forced epochs, then the self-critical ones, all kept by dev CIDEr-D: the best of them is the model's.
    assert len(scores) == len(bleu4) == summary["epochs_run"] + 2
    assert summary["best_dev_cider"] == pytest.approx(max(scores), abs=5e-5)
    for settings, error in (
        (["train.finetune_from=_blocks.15._expand_conv"], "train.self_critical_epochs needs a frozen encoder"),
        (["train.finetune_from=null", "train.self_critical_samples=1"], "train.self_critical_samples is 1: each"),
    ):
        bad = run_dvc(repo, "exp", "run", *pinned, *(arg for setting in settings for arg in ("-S", setting)))
        assert bad.returncode != 0
        assert f"error: {error}" in bad.stderr + bad.stdout
        assert "train: epoch 1" not in bad.stdout + bad.stderr  # refused before any training
    back = ("train.finetune_from=null", "train.self_critical_samples=5", "train.self_critical_epochs=0")
    dvc(repo, "exp", "run", *(arg for setting in back for arg in ("-S", setting)))


def queue_status(repo, deadline: float) -> str:
    """``dvc queue status``, retried until ``deadline``: while a task runs, DVC reading its queue files fails now
    and then ("unexpected error - Expecting value")."""
    while True:
        result = run_dvc(repo, "queue", "status")
        if result.returncode == 0:
            return result.stdout
        assert time.monotonic() < deadline, result.stdout + result.stderr
        time.sleep(2)


def test_a_queued_sweep_starts_each_experiment_from_the_baseline(repo):
    repo, _ = repo
    baseline = _flat(yaml.safe_load((repo / "params.yaml").read_text()))
    for units in (12, 20):
        dvc(repo, "exp", "run", "--queue", "-n", f"units-{units}", "-S", f"decoder.units={units}")
    assert tracked_changes(repo) == ""  # queued, not applied: the next idea starts from the baseline too
    # `dvc queue start` leaves a daemon that holds the stdout it was given until its worker exits (an idle worker
    # on a loaded machine can wait minutes): give it none of ours to wait for, and poll the queue instead.
    started = subprocess.run(
        ["dvc", "queue", "start"], cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=ENVIRONMENT | {"PYTHONPATH": str(repo)},
    )  # fmt: skip
    assert started.returncode == 0
    # Until both have ended: between two tasks DVC's status can list neither as queued nor running for a moment.
    deadline = time.monotonic() + 600
    status = queue_status(repo, deadline)
    while status.count("Success") < 2 and not re.search(r"\bFailed\b", status):
        assert time.monotonic() < deadline, status
        time.sleep(2)
        status = queue_status(repo, deadline)
    assert status.count("Success") >= 2, status
    rows = {}
    for commit in json.loads(dvc(repo, "exp", "show", "--json")):
        for experiment in commit.get("experiments") or []:
            for revision in experiment["revs"]:
                data = revision["data"]
                rows[revision["name"]] = (
                    _flat(data["params"]["params.yaml"]["data"]),
                    data["metrics"]["metrics/scores.json"]["data"]["bleu4"],
                )
    for units in (12, 20):
        params, bleu4 = rows[f"units-{units}"]
        assert {name: value for name, value in params.items() if baseline[name] != value} == {"decoder.units": units}
        assert 0 <= bleu4 <= 1


def test_an_ensemble_member_trains_alone_and_evaluate_decodes_with_both(repo):
    repo, _ = repo
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["ensemble"] = {"seed2": {"train": {"seed": 2}}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran(dvc(repo, "repro")) == {"train_member@seed2", "evaluate", "export"}  # the member alone
    assert (repo / "ensemble" / "seed2" / "captioner.keras").exists()
    assert json.loads((repo / "metrics" / "scores.json").read_text())["ensemble_members"] == 2
    # Changing one member retrains only it; a transformer beside a recurrent model decodes and exports with it.
    params["ensemble"]["seed2"]["decoder"] = {"arch": "transformer", "heads": 4, "ff_units": 32}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran(dvc(repo, "repro")) == {"train_member@seed2", "evaluate", "export"}
    assert json.loads((repo / "ensemble" / "seed2" / "captioner.json").read_text())["decoder"]["layers"] == 2
    image = next((repo / "data" / "raw" / "Flicker8k_Dataset").iterdir())
    captioned = subprocess.run(["caption", str(image), "--member", "ensemble/seed2", "--json"], cwd=repo,
                               capture_output=True, text=True, env=ENVIRONMENT)  # fmt: skip
    assert captioned.returncode == 0, captioned.stderr
    assert json.loads(captioned.stdout)["caption"]
    bad = params | {"ensemble": {"seed2": {"features": {"pooling": "grid"}}}}
    (repo / "params.yaml").write_text(yaml.safe_dump(bad, sort_keys=False))
    refused = subprocess.run([sys.executable, "stages/evaluate.py"], cwd=repo, capture_output=True, text=True)
    assert refused.returncode == 1 and refused.stderr.startswith("error: ensemble.seed2 is {'features'")
