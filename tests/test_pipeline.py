"""End to end: `dvc repro` on tiny params in a temporary git repo, what reruns after a change, the commands a user
runs on the results, a remote, two workers. Training's other modes: tests/test_pipeline_training.py."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from captioner.params import RULES, SPEED_ONLY
from captioner.stage import stage_param_names
from tests.conftest import PROJECT_FILES
from tests.tiny_pipeline import (
    BY_DEV_BLEU4,
    ENVIRONMENT,
    EVERY_STAGE,
    assert_selected_by_dev_bleu4,
    dvc,
    ran,
    run_dvc,
    tf_noise,
    tracked_changes,
)

pytestmark = pytest.mark.e2e  # `pytest -m "not e2e"` runs the unit tests alone


def test_repro_runs_every_stage_and_writes_metrics(repo):
    repo, first = repo
    assert ran(first) == EVERY_STAGE
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


def test_each_stage_lists_exactly_the_params_it_reads(repo):
    repo, _ = repo
    read = {}
    for line in (repo / ".git" / "params-read").read_text().splitlines():  # the first repro's record
        stage, *names = line.split()
        read.setdefault(stage, set()).update(names)
    pipeline = yaml.safe_load((repo / "dvc.yaml").read_text())
    # What the shapes default leaves unread: the other datasets' params. (The train stage reads every key it lists
    # into its TrainConfig, and the model card records them all.)
    unread_here = {"download": {name for name in RULES if name.startswith(("flickr8k.", "karpathy."))}}
    for stage in set(pipeline["stages"]) - {"train_member"}:
        listed = set(stage_param_names(pipeline, stage))
        assert read[stage] - set(SPEED_ONLY) == listed - unread_here.get(stage, set()), stage
        assert not listed & set(SPEED_ONLY), stage
    assert set(SPEED_ONLY) <= set().union(*read.values())  # each one is read, by a stage that does not list it


def test_speed_only_params_rerun_nothing_and_a_forced_repro_with_them_changes_no_tracked_byte(repo):
    repo, _ = repo
    params = yaml.safe_load((repo / "params.yaml").read_text())
    values = {"evaluate.batch_size": 3, "train.threads_per_op": 2}
    assert set(values) == set(SPEED_ONLY)
    for name, value in values.items():
        section, key = name.split(".")
        assert params[section][key] != value
        params[section][key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "Data and pipelines are up to date" in dvc(repo, "status")
    # Every stage again, the speed-only params changed: every output, DVC-cached or in git, comes out byte for byte
    # the same (dvc.lock, metrics, plots and figures as committed).
    forced = dvc(repo, "repro", "--force")
    assert ran(forced) == EVERY_STAGE
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, check=True)
    # Nothing new beside git's files; dvc.lock staged or not (core.autostage stages it when its bytes change).
    changed = sorted(line[3:] for line in status.stdout.splitlines())
    assert changed in (["params.yaml"], ["dvc.lock", "params.yaml"]), status.stdout
    # The one exception: the TensorFlow Lite converter names tensors with process-wide counters, so the export's
    # bytes (its hash in dvc.lock) differ from run to run. Everything else in dvc.lock is as committed.
    committed = subprocess.run(["git", "show", "HEAD:dvc.lock"], cwd=repo, capture_output=True, text=True, check=True)
    locks = [yaml.safe_load(committed.stdout), yaml.safe_load((repo / "dvc.lock").read_text())]
    for lock in locks:
        lock["stages"]["export"].pop("outs")
    assert locks[0] == locks[1]
    training = json.loads((repo / "metrics" / "train" / "metrics.json").read_text())
    assert set(training) == {"best_epoch", "best_dev_loss", "epochs_run"}
    timings = (repo / "logs" / "train_epochs.tsv").read_text().splitlines()
    assert timings[0] == "epoch\tepoch_seconds" and timings[1].startswith("1\t")  # kept, outside git


def test_the_console_of_a_stage_is_quiet_unless_asked(repo):
    repo, _ = repo
    quiet = subprocess.run([sys.executable, "stages/evaluate.py"], cwd=repo, capture_output=True, text=True)
    assert quiet.returncode == 0 and not tf_noise(quiet.stderr)
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
    assert ran(dvc(repo, "exp", "run", "-S", "decoder.units=24")) == {"train", "evaluate", "export"}
    assert "Data and pipelines are up to date" in dvc(repo, "status")
    report = subprocess.run(["caption-diff", "HEAD"], cwd=repo, capture_output=True, text=True, env=ENVIRONMENT)
    assert report.returncode == 0, report.stderr
    assert report.stdout.startswith("## Test scores: `HEAD` → this change")
    assert re.search(r"\| metrics/scores.json\s*\| bleu1\s*\|", report.stdout)
    assert report.stdout.index("bleu1") < report.stdout.index("## Training") < report.stdout.index("## Params")
    committed = subprocess.run(["git", "show", "HEAD:metrics/test_captions.tsv"], cwd=repo, capture_output=True,
                               text=True, check=True).stdout  # fmt: skip
    weighed = "on the same 8 test images; redrawing them with replacement (paired bootstrap, 95 %)"
    captions_changed = committed != (repo / "metrics" / "test_captions.tsv").read_text()
    assert (weighed in report.stdout) == captions_changed  # read from git and the workspace, both sides
    diff = subprocess.run(["dvc", "metrics", "diff", "HEAD", "--json"], cwd=repo, capture_output=True, text=True)
    metrics_diff = json.loads(diff.stdout)
    assert "bleu1" in metrics_diff["metrics/scores.json"]  # and nothing of the machine or of the last epoch:
    assert set(metrics_diff.get("metrics/train/metrics.json", {})) <= {"best_epoch", "best_dev_loss", "epochs_run"}
    assert ran(dvc(repo, "exp", "run", "-S", "train.epochs=3")) == {"train", "evaluate", "export"}
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
    assert ran(switched) == {"extract_features", "train", "evaluate", "export"}
    assert (repo / "data" / "features" / "mobilenet_v2.h5").exists()
    back = dvc(repo, "exp", "run", "-S", "encoder=efficientnet_lite0", "-S", "features.weights=imagenet")
    assert "extract_features" not in ran(back) and "train" not in ran(back)  # evaluate's uncached outputs may rerun it
    assert "Stage 'extract_features' is cached - skipping run" in back
    assert lite0.read_bytes() == before


def test_attention_over_the_grid_runs_end_to_end(repo):
    repo, _ = repo
    output = dvc(repo, "exp", "run", "-S", "decoder.arch=attention", "-S", "features.pooling=grid", *BY_DEV_BLEU4)
    assert ran(output) == {"extract_features", "train", "evaluate", "export"}
    assert "test_images 8" in output
    assert_selected_by_dev_bleu4(repo)
    figures = sorted(p.name for p in (repo / "metrics" / "figures").iterdir())
    assert figures == ["attention_1.png", "attention_2.png", "attention_3.png", "cosine_similarity.png", "samples.png"]
    assert "Data and pipelines are up to date" in dvc(repo, "status")


def test_attention_on_pooled_features_fails_with_one_clear_line(repo):
    repo, _ = repo
    result = run_dvc(repo, "exp", "run", "-S", "decoder.arch=attention", "-S", "features.pooling=avg")
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


def plotted_revisions(repo, revision: str) -> tuple[dict, list]:
    """``dvc plots diff <revision> --json`` in ``repo``: (plot name → the revisions it holds data of, errors)."""
    result = run_dvc(repo, "plots", "diff", revision, "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)  # stderr: DVC's warning when a revision's plots did not load
    revisions = {name: {rev for plot in plots for rev in plot["revisions"]} for name, plots in shown["data"].items()}
    return revisions, shown.get("errors") or []


def test_the_default_remote_shares_features_model_and_curves_with_a_second_clone(repo):
    repo, _ = repo
    dvc(repo, "push")  # to the default remote: captioner-dvc-storage beside the repo, created now
    assert (repo.parent / "captioner-dvc-storage" / "files" / "md5").is_dir()
    clone = repo.parent / f"{repo.name}-clone"  # beside it too, so its default remote is the same folder
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    errors = plotted_revisions(clone, "main")[1]
    assert errors, "before dvc pull main's curves cannot load"
    dvc(clone, "pull")
    encoder = yaml.safe_load((clone / "params.yaml").read_text())["encoder"]
    assert (clone / "data" / "features" / f"{encoder}.h5").read_bytes() == (
        repo / "data" / "features" / f"{encoder}.h5"
    ).read_bytes()
    assert (clone / "models" / "captioner.keras").exists()
    assert "Data and pipelines are up to date" in dvc(clone, "status")
    assert ran(dvc(clone, "repro")) == set()
    revisions, errors = plotted_revisions(clone, "main")
    assert not errors and revisions["Loss (train vs dev)"] == {"main", "workspace"}
    # No empty plot: each plotted file exists, the optional curves only when a run logs them.
    assert all(revisions.values()) and "metrics/train/plots/metrics/by_epoch/learning_rate.tsv" in revisions
    assert not any("dev_bleu4" in name for name in revisions)  # train.select_by: dev_loss scores no dev BLEU-4
    assert {"metrics/figures/samples.png", "metrics/figures/cosine_similarity.png"} <= set(revisions)
    # What the pull-request workflow attaches: main's and this side's curves drawn to PNG, without a browser.
    command = ["caption-diff", "main", "--plots", "plots-diff"]
    report = subprocess.run(command, cwd=clone, capture_output=True, text=True, env=ENVIRONMENT)
    assert report.returncode == 0, report.stderr
    index = (clone / "plots-diff" / "index.md").read_text()
    assert "## Loss (train vs dev) (workspace, main)" in index and "Not drawn" not in index
    drawn = re.findall(r"!\[[^]]*\]\(([^)]+)\)", index)
    assert "loss-train-vs-dev.png" in drawn and "main-samples.png" in drawn
    assert all((clone / "plots-diff" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in drawn)


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
