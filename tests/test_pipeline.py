"""End to end: `dvc repro` on tiny params in a temporary git repo, and what reruns after a change."""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from tests.conftest import PROJECT, PROJECT_FILES

TINY = {
    "shapes": {"num_images": 40, "image_size": 64, "dev_fraction": 0.2, "test_fraction": 0.2, "seed": 1},
    "features": {"batch_size": 16},
    "decoder": {"units": 16, "embedding_dim": 8},
    "train": {"epochs": 2, "batch_size": 32},
}
BY_DEV_BLEU4 = ("-S", "train.select_by=dev_bleu4")


GIT_IDENTITY = {k: "pipeline-test" for k in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME")} | {
    k: "test@example.invalid" for k in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL")
}
ENVIRONMENT = os.environ | GIT_IDENTITY


def dvc(repo, *args) -> str:
    result = subprocess.run(
        ["dvc", *args], cwd=repo, capture_output=True, text=True, env=ENVIRONMENT | {"PYTHONPATH": str(repo)}
    )
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([\w@-]+)'", output))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("pipeline")
    for name in PROJECT_FILES:
        source = PROJECT / name
        copy = shutil.copytree if source.is_dir() else shutil.copy
        copy(source, repo / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if source.is_dir() else {}))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copy(PROJECT / ".gitignore", repo / ".gitignore")  # data, models and logs stay out of git
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"]):
        subprocess.run(command, cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", "tiny"], cwd=repo, check=True, env=ENVIRONMENT)
    first = dvc(repo, "repro")
    commit_all(repo, "tiny, reproduced")
    return repo, first


def commit_all(repo, message: str) -> None:
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", message], cwd=repo, check=True, env=ENVIRONMENT)


def tracked_changes(repo) -> str:
    return subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout


def test_repro_runs_every_stage_and_writes_metrics(repo):
    repo, first = repo
    assert ran(first) == {"download", "clean_captions", "extract_features", "build_vocab", "train", "evaluate"}
    scores = json.loads((repo / "metrics" / "scores.json").read_text())
    bounded = {f"bleu{n}" for n in range(1, 5)} | {"rouge_l", "token_accuracy", "novel_rate"}
    assert bounded | {"cider", "perplexity", "cosine_similarity", "vocab_used", "avg_len", "beam_size"} <= set(scores)
    assert all(0 <= scores[key] <= 1 for key in bounded) and scores["perplexity"] >= 1
    assert ("meteor" in scores) == (shutil.which("java") is not None)
    shown = dvc(repo, "metrics", "show")
    assert all(key in shown for key in ("bleu4", "cider", "rouge_l", "cosine_similarity"))
    assert sorted(p.name for p in (repo / "metrics" / "figures").iterdir()) == ["cosine_similarity.png", "samples.png"]
    assert (repo / "models" / "captioner.json").exists()
    lines = (repo / "metrics" / "test_captions.tsv").read_text().splitlines()
    assert lines[0] == "image\tgenerated\treferences" and len(lines) == 1 + 8
    assert (repo / "data" / "features" / "efficientnet_lite0.h5").exists()
    assert (repo / "metrics" / "train" / "plots" / "metrics" / "dev" / "loss.tsv").exists()
    assert "Data and pipelines are up to date" in dvc(repo, "status")


def test_a_second_forced_repro_leaves_every_tracked_file_byte_identical(repo):
    repo, _ = repo
    forced = dvc(repo, "repro", "--force")
    assert ran(forced) == {"download", "clean_captions", "extract_features", "build_vocab", "train", "evaluate"}
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, check=True)
    assert status.stdout == ""  # dvc.lock, metrics, plots and figures as committed
    training = json.loads((repo / "metrics" / "train" / "metrics.json").read_text())
    assert set(training) == {"best_epoch", "best_dev_loss", "epochs_run"}
    timings = (repo / "logs" / "train_epochs.tsv").read_text().splitlines()
    assert timings[0] == "epoch\tepoch_seconds" and timings[1].startswith("1\t")  # kept, outside git


def test_the_console_of_a_stage_is_quiet_unless_asked(repo):
    repo, _ = repo
    noise = ("I0000", "W0000", "E0000", "WARNING: All log messages", "cuInit", "oneDNN")
    quiet = subprocess.run([sys.executable, "stages/evaluate.py"], cwd=repo, capture_output=True, text=True)
    assert quiet.returncode == 0 and not [line for line in quiet.stderr.splitlines() if line.startswith(noise)]
    assert quiet.stdout.startswith("evaluate: bleu1")
    loud = subprocess.run(
        [sys.executable, "stages/evaluate.py"], cwd=repo, capture_output=True, text=True,
        env=os.environ | {"CAPTIONER_TF_LOGS": "1"},
    )  # fmt: skip
    assert loud.returncode == 0 and "WARNING: All log messages before absl::InitializeLog()" in loud.stderr


def test_caption_command_captions_good_images_and_names_bad_ones(repo, tmp_path):
    from PIL import Image

    repo, _ = repo
    odd = tmp_path / "odd size.png"
    Image.new("RGB", (300, 170), (200, 30, 30)).save(odd)
    shape = next((repo / "data" / "raw" / "Flicker8k_Dataset").iterdir())
    (tmp_path / "notes.txt").write_text("not an image")
    command = ["caption", str(shape), str(tmp_path / "notes.txt"), str(odd), str(tmp_path / "gone.jpg"), "--beam", "2"]
    result = subprocess.run(command, cwd=repo, capture_output=True, text=True, env=ENVIRONMENT)
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert [line.split(": ")[0] for line in lines] == [str(shape), str(odd)]
    assert all(len(line.split(": ", 1)[1].split()) >= 1 for line in lines)
    errors = result.stderr.strip().splitlines()
    assert errors[0].startswith("caption: note: the model in models/ was trained on generated shapes and describes")
    assert len(errors) == 3  # the note and the two bad files: no TensorFlow start-up lines
    assert f"caption: error: {tmp_path / 'notes.txt'}: not a readable image" in errors
    assert f"caption: error: {tmp_path / 'gone.jpg'}: no such file" in errors
    as_json = subprocess.run(
        ["caption", str(shape), "--json"], cwd=repo, capture_output=True, text=True, env=ENVIRONMENT
    )
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["image"] == str(shape)


def test_decoder_change_reruns_train_and_evaluate_only_and_the_diff_report_shows_it(repo):
    repo, _ = repo
    assert ran(dvc(repo, "exp", "run", "-S", "decoder.units=24")) == {"train", "evaluate"}
    assert "Data and pipelines are up to date" in dvc(repo, "status")
    report = subprocess.run(["caption-diff", "HEAD"], cwd=repo, capture_output=True, text=True, env=ENVIRONMENT)
    assert report.returncode == 0, report.stderr
    assert report.stdout.startswith("## Test scores: `HEAD` → this change")
    assert re.search(r"\| metrics/scores.json\s*\| bleu1\s*\|", report.stdout)
    assert report.stdout.index("bleu1") < report.stdout.index("## Training") < report.stdout.index("## Params")
    diff = subprocess.run(["dvc", "metrics", "diff", "HEAD", "--json"], cwd=repo, capture_output=True, text=True)
    metrics_diff = json.loads(diff.stdout)
    assert "bleu1" in metrics_diff["metrics/scores.json"]  # and nothing of the machine or of the last epoch:
    assert set(metrics_diff.get("metrics/train/metrics.json", {})) <= {"best_epoch", "best_dev_loss", "epochs_run"}
    assert ran(dvc(repo, "exp", "run", "-S", "train.epochs=3")) == {"train", "evaluate"}
    table = subprocess.run(["caption-exps"], cwd=repo, capture_output=True, text=True, env=ENVIRONMENT)
    assert table.returncode == 0, table.stderr
    header = [cell.strip() for cell in table.stdout.splitlines()[0].strip("|").split("|")]
    assert header == ["Experiment", "decoder.units", "train.epochs", "bleu4", "cider", "meteor", "rouge_l"]
    assert len(table.stdout.splitlines()) >= 2 + 4  # workspace, HEAD, and the two experiments
    assert max(map(len, table.stdout.splitlines())) <= 120 and "data/" not in table.stdout
    assert re.search(r"\| params.yaml\s*\| decoder.units\s*\| 16\s*\| 24\s*\|", report.stdout)
    missing = subprocess.run(["caption-diff", "no-such-rev"], cwd=repo, capture_output=True, text=True)
    assert missing.returncode == 1 and missing.stderr.startswith("caption-diff: error: dvc metrics diff")


def test_encoder_change_reruns_from_extraction_and_switching_back_uses_the_run_cache(repo):
    repo, _ = repo
    lite0 = repo / "data" / "features" / "efficientnet_lite0.h5"
    before = lite0.read_bytes()
    switched = dvc(repo, "exp", "run", "-S", "encoder=mobilenet_v2", "-S", "features.weights=none")
    assert ran(switched) == {"extract_features", "train", "evaluate"}
    assert (repo / "data" / "features" / "mobilenet_v2.h5").exists()
    back = dvc(repo, "exp", "run", "-S", "encoder=efficientnet_lite0", "-S", "features.weights=imagenet")
    assert "extract_features" not in ran(back) and "train" not in ran(back)  # evaluate's uncached outputs may rerun it
    assert "Stage 'extract_features' is cached - skipping run" in back
    assert lite0.read_bytes() == before


def test_attention_over_the_grid_runs_end_to_end(repo):
    repo, _ = repo
    output = dvc(repo, "exp", "run", "-S", "decoder.arch=attention", "-S", "features.pooling=grid", *BY_DEV_BLEU4)
    assert ran(output) == {"extract_features", "train", "evaluate"}
    assert "test_images 8" in output
    assert_selected_by_dev_bleu4(repo)
    figures = sorted(p.name for p in (repo / "metrics" / "figures").iterdir())
    assert figures == ["attention_1.png", "attention_2.png", "attention_3.png", "cosine_similarity.png", "samples.png"]
    assert "Data and pipelines are up to date" in dvc(repo, "status")


def test_attention_on_pooled_features_fails_with_one_clear_line(repo):
    repo, _ = repo
    result = subprocess.run(
        ["dvc", "exp", "run", "-S", "decoder.arch=attention", "-S", "features.pooling=avg"],
        cwd=repo,
        capture_output=True,
        text=True,
        env=ENVIRONMENT | {"PYTHONPATH": str(repo)},
    )
    assert result.returncode != 0
    assert "error: attention needs the feature grid" in result.stderr + result.stdout
    assert "set features.pooling to grid" in result.stderr + result.stdout
    # DVC keeps the -S values and has removed the failed stage's outputs, the git-tracked ones too; the
    # README's recipe (reset the params, repro) brings back the last commit's, train's from the run-cache.
    assert not (repo / "models" / "captioner.json").exists()
    assert "params.yaml" in tracked_changes(repo) and "metrics/train/metrics.json" in tracked_changes(repo)
    subprocess.run(["git", "checkout", "--", "params.yaml"], cwd=repo, check=True)
    assert "train" not in ran(dvc(repo, "repro"))
    assert tracked_changes(repo) == "" and (repo / "models" / "captioner.json").exists()


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
    bad = subprocess.run(
        ["dvc", "exp", "run", "-S", "train.finetune_from=conv5_block1_out"],
        cwd=repo,
        capture_output=True,
        text=True,
        env=ENVIRONMENT | {"PYTHONPATH": str(repo)},
    )
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
    assert "train" in ran(output) and ran(output) <= {"train", "evaluate"}
    assert "self-critical epoch 2: mean sampled CIDEr-D" in output and ", dev CIDEr-D " in output
    summary = json.loads((repo / "metrics" / "train" / "metrics.json").read_text())
    plots = repo / "metrics" / "train" / "plots" / "metrics"
    rewards = (plots / "self_critical" / "reward.tsv").read_text().splitlines()[1:]
    scores = [float(line.split("\t")[1]) for line in (plots / "dev" / "cider.tsv").read_text().splitlines()[1:]]
    assert summary["self_critical_epochs_run"] == len(rewards) == 2
    bleu4 = (plots / "dev" / "bleu4.tsv").read_text().splitlines()[1:]  # logged beside, not deciding
    # Teacher-forced epochs, then the self-critical ones, all kept by dev CIDEr-D: the best of them is the model's.
    assert len(scores) == len(bleu4) == summary["epochs_run"] + 2
    assert summary["best_dev_cider"] == pytest.approx(max(scores), abs=5e-5)
    for settings, error in (
        (["train.finetune_from=_blocks.15._expand_conv"], "train.self_critical_epochs needs a frozen encoder"),
        (["train.finetune_from=null", "train.self_critical_samples=1"], "train.self_critical_samples is 1: each"),
    ):
        bad = subprocess.run(
            ["dvc", "exp", "run", *pinned, *(arg for setting in settings for arg in ("-S", setting))],
            cwd=repo,
            capture_output=True,
            text=True,
            env=ENVIRONMENT | {"PYTHONPATH": str(repo)},
        )
        assert bad.returncode != 0
        assert f"error: {error}" in bad.stderr + bad.stdout
        assert "train: epoch 1" not in bad.stdout + bad.stderr  # refused before any training
    back = ("train.finetune_from=null", "train.self_critical_samples=5", "train.self_critical_epochs=0")
    dvc(repo, "exp", "run", *(arg for setting in back for arg in ("-S", setting)))


def assert_selected_by_dev_bleu4(repo) -> None:
    summary = json.loads((repo / "metrics" / "train" / "metrics.json").read_text())
    logged = (repo / "metrics" / "train" / "plots" / "metrics" / "dev" / "bleu4.tsv").read_text().splitlines()
    scores = [float(line.split("\t")[1]) for line in logged[1:]]
    assert len(scores) == summary["epochs_run"] and summary["best_dev_bleu4"] == max(scores)
    assert scores[summary["best_epoch"] - 1] == max(scores)


def test_a_queued_sweep_runs_and_exp_show_lists_both_experiments(repo):
    repo, _ = repo
    for units in (12, 20):
        pinned = ["-S", "decoder.arch=inject", "-S", "features.pooling=avg"]  # earlier tests left other values
        dvc(repo, "exp", "run", "--queue", "-n", f"units-{units}", "-S", f"decoder.units={units}", *pinned)
    # `dvc queue start` leaves a daemon that holds the stdout it was given until its worker exits (an idle worker
    # on a loaded machine can wait minutes): give it none of ours to wait for, and poll the queue instead.
    started = subprocess.run(
        ["dvc", "queue", "start"], cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=ENVIRONMENT | {"PYTHONPATH": str(repo)},
    )  # fmt: skip
    assert started.returncode == 0
    deadline = time.monotonic() + 600
    while re.search(r"\b(Queued|Running)\b", dvc(repo, "queue", "status")):
        assert time.monotonic() < deadline, dvc(repo, "queue", "status")
        time.sleep(2)
    assert dvc(repo, "queue", "status").count("Success") >= 2
    rows = {}
    for commit in json.loads(dvc(repo, "exp", "show", "--json")):
        for experiment in commit.get("experiments") or []:
            for revision in experiment["revs"]:
                data = revision["data"]
                rows[revision["name"]] = (
                    data["params"]["params.yaml"]["data"]["decoder"]["units"],
                    data["metrics"]["metrics/scores.json"]["data"]["bleu4"],
                )
    assert rows["units-12"][0] == 12 and rows["units-20"][0] == 20
    assert all(0 <= bleu4 <= 1 for _, bleu4 in rows.values())


def test_a_second_clone_pulls_features_and_model_from_a_remote_without_rerunning(repo, tmp_path):
    repo, _ = repo
    # Back to the reproduced commit: earlier tests left experiment results in the workspace.
    subprocess.run(["git", "reset", "-q", "--hard", "HEAD"], cwd=repo, check=True)
    subprocess.run(["git", "clean", "-qfd"], cwd=repo, check=True)
    dvc(repo, "checkout", "--force")
    remote = tmp_path / "remote"
    dvc(repo, "remote", "add", "--default", "shared", str(remote))
    commit_all(repo, "state to share")
    dvc(repo, "push")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    dvc(clone, "pull")
    encoder = yaml.safe_load((clone / "params.yaml").read_text())["encoder"]
    assert (clone / "data" / "features" / f"{encoder}.h5").read_bytes() == (
        repo / "data" / "features" / f"{encoder}.h5"
    ).read_bytes()
    assert (clone / "models" / "captioner.keras").exists()
    assert "Data and pipelines are up to date" in dvc(clone, "status")
    assert ran(dvc(clone, "repro")) == set()


def test_an_ensemble_member_trains_alone_and_evaluate_decodes_with_both(repo, tmp_path):
    repo, _ = repo
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["ensemble"] = {"seed2": {"train": {"seed": 2}}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran(dvc(repo, "repro")) == {"train_member@seed2", "evaluate"}  # the member alone
    assert (repo / "ensemble" / "seed2" / "captioner.keras").exists()
    assert json.loads((repo / "metrics" / "scores.json").read_text())["ensemble_members"] == 2
    params["ensemble"]["seed2"]["train"]["seed"] = 3  # changing one member retrains only it
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran(dvc(repo, "repro")) == {"train_member@seed2", "evaluate"}
    image = next((repo / "data" / "raw" / "Flicker8k_Dataset").iterdir())
    captioned = subprocess.run(["caption", str(image), "--member", "ensemble/seed2", "--json"], cwd=repo,
                               capture_output=True, text=True, env=ENVIRONMENT)  # fmt: skip
    assert captioned.returncode == 0, captioned.stderr
    assert json.loads(captioned.stdout)["caption"]
    bad = params | {"ensemble": {"seed2": {"features": {"pooling": "grid"}}}}
    (repo / "params.yaml").write_text(yaml.safe_dump(bad, sort_keys=False))
    refused = subprocess.run([sys.executable, "stages/evaluate.py"], cwd=repo, capture_output=True, text=True)
    assert refused.returncode == 1 and refused.stderr.startswith("error: ensemble.seed2 is {'features'")


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_workers_on_loopback_train_the_weights_of_one_process_and_only_the_chief_writes(repo, tmp_path):
    import keras
    import numpy as np

    repo, _ = repo
    # Dropout off: each worker would draw the masks of its half of a batch, not one process's masks.
    overrides = {"decoder": {"arch": "inject", "units": 16, "dropout": 0.0}, "features": {"pooling": "avg"}}
    places = {}
    for role, strategy in (("alone", "default"), ("chief", "multi_worker"), ("worker", "multi_worker")):
        place = places[role] = tmp_path / role
        for name in (*PROJECT_FILES, "data/features", "data/captions", "data/vocab.json"):
            copy = shutil.copytree if (repo / name).is_dir() else shutil.copy
            (place / name).parent.mkdir(parents=True, exist_ok=True)
            copy(repo / name, place / name)
        params = yaml.safe_load((place / "params.yaml").read_text())
        for section, values in overrides.items():
            params[section].update(values)
        params["train"].update({"strategy": strategy, "select_by": "dev_loss", "self_critical_epochs": 0,
                                "finetune_from": None})  # fmt: skip
        (place / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cluster = {"worker": [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]}

    def start(role: str, index: int | None):
        task = {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        return subprocess.Popen(
            [sys.executable, "stages/train.py"], cwd=places[role], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=os.environ | {"PYTHONPATH": str(places[role])} | (task if index is not None else {}),
        )  # fmt: skip

    runs = {role: start(role, index) for role, index in (("chief", 0), ("worker", 1))}
    outputs = {role: run.communicate(timeout=240)[0] for role, run in runs.items()}
    alone = start("alone", None)
    outputs["alone"] = alone.communicate(timeout=240)[0]
    for role, run in (*runs.items(), ("alone", alone)):
        assert run.returncode == 0, f"{role}:\n{outputs[role][-3000:]}"
    assert "2 replica(s)" in outputs["chief"] and "1 replica(s)" in outputs["alone"]
    assert not (places["worker"] / "models").exists() and not (places["worker"] / "metrics" / "train").exists()
    assert (places["chief"] / "metrics" / "train" / "metrics.json").exists()
    weights = {
        role: keras.saving.load_model(places[role] / "models" / "captioner.keras").get_weights()
        for role in ("alone", "chief")
    }
    initial_epochs = json.loads((places["chief"] / "metrics" / "train" / "metrics.json").read_text())["epochs_run"]
    assert initial_epochs == 2
    difference = max(np.abs(a - b).max() for a, b in zip(weights["alone"], weights["chief"], strict=True))
    print(f"two workers vs one process: largest weight difference {difference:.2e}")
    assert difference < 1e-5
