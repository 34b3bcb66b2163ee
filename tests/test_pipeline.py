"""What only DVC proves, on tiny params in a temporary git repo (each test on its own copy of one reproduced repo):
`dvc repro` runs every stage; which stages a params change reruns; experiments, the run-cache and the way back; the
queue; a remote, a second clone and the artifact registry; the pull-request diff. And two training processes on
loopback. What each mode of training computes is proven in this process: tests/training/test_train.py."""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from captioner.params import PARAMS, SPEED, declared
from captioner.report import _flat
from captioner.stage import stage_param_names
from tests.conftest import PROJECT, PROJECT_FILES, run_stage, set_params
from tests.tiny_pipeline import (
    ENVIRONMENT,
    EVERY_STAGE,
    dvc,
    ran,
    run_dvc,
    tracked_changes,
)

README = (PROJECT / "README.md").read_text()
pytestmark = pytest.mark.e2e  # `pytest -m "not e2e"` runs the unit tests alone


def test_repro_runs_every_stage_and_writes_metrics(repo):
    repo, first = repo
    assert ran(first) == EVERY_STAGE and re.search(r"^evaluate: bleu1 [\d.]+, bleu2", first, re.MULTILINE)
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
    unread_here = {"download": set(declared("flickr8k", "karpathy"))}
    speed = set(declared(SPEED))
    for stage in set(pipeline["stages"]) - {"train_member"}:
        listed = set(declared(*stage_param_names(pipeline, stage)))  # each listed section's params
        params_read = {name for name in read[stage] if name in PARAMS}  # leaves, not the sections read whole
        assert params_read - speed == listed - unread_here.get(stage, set()), stage
        assert not listed & speed, stage
    assert speed <= set().union(*read.values())  # each one is read, by a stage that does not list it


def dry_run(repo, **sections) -> set[str]:
    """The stages ``dvc repro`` would run with ``sections`` over params.yaml (then put back as committed)."""
    set_params(repo, **sections)
    stages = ran(dvc(repo, "repro", "--dry"))
    subprocess.run(["git", "checkout", "params.yaml"], cwd=repo, check=True)
    return stages


def test_a_params_change_reaches_exactly_the_stages_that_declare_it(repo):
    """What ``dvc repro --dry`` lists: the stages whose declared params changed (those downstream of them rerun
    only when their inputs' hashes change: the experiment below)."""
    repo, _ = repo
    assert dry_run(repo, speed={"decode_batch_size": 3, "threads_per_op": 2}) == set()
    assert dry_run(repo, decoder={"units": 24}) == dry_run(repo, train={"finetune_from": "top_conv"}) == {"train"}
    assert dry_run(repo, features={"image_size": 96}) == {"extract_features"}
    assert dry_run(repo, decoder={"arch": "attention"}, features={"pooling": "grid"}) == {"extract_features", "train"}
    assert dry_run(repo, evaluate={"beam_size": 2}) == dry_run(repo, evaluate={"max_len": 9}) == {"evaluate", "export"}
    assert dry_run(repo, vocab={"min_count": 1}) == {"build_vocab"}
    member = {"second": {"decoder": {"arch": "transformer"}}}
    assert dry_run(repo, ensemble=member) == {"train_member@second", "evaluate", "export"}  # the member alone


def test_speed_only_params_rerun_nothing_and_stages_run_again_with_them_change_no_byte(repo):
    """``speed.threads_per_op`` sizes TensorFlow's thread pools when a process starts, ``speed.decode_batch_size``
    how many images decode at once: train and evaluate run again in fresh processes with other values write what the
    repro wrote, byte for byte (outputs in git and in DVC's cache), and keep the timings outside git."""
    repo, _ = repo
    set_params(repo, speed={"threads_per_op": 2, "decode_batch_size": 3})
    assert "Data and pipelines are up to date" in dvc(repo, "status")
    outputs = [
        repo / "models" / "captioner.keras",
        repo / "metrics" / "scores.json",
        repo / "metrics" / "test_captions.tsv",
    ]
    outputs += sorted((repo / "metrics" / "train").rglob("*.*")) + sorted((repo / "metrics" / "figures").iterdir())
    before = [path.read_bytes() for path in outputs]
    for stage in ("train", "evaluate"):
        environment = ENVIRONMENT | {"PYTHONPATH": str(repo)}
        command = [sys.executable, f"stages/{stage}.py"]
        run = subprocess.run(command, cwd=repo, capture_output=True, text=True, env=environment)
        assert run.returncode == 0, run.stderr
    assert [path.read_bytes() for path in outputs] == before
    assert tracked_changes(repo).split() == ["M", "params.yaml"]
    summary = json.loads((repo / "metrics" / "train" / "metrics.json").read_text())
    assert set(summary) == {"best_epoch", "best_dev_loss", "epochs_run"}
    timings = (repo / "logs" / "train_epochs.tsv").read_text().splitlines()
    assert timings[0] == "epoch\tepoch_seconds" and timings[1].startswith("1\t")  # kept, outside git


def test_an_experiment_reruns_its_stages_and_the_diff_report_and_experiments_table_show_it(repo):
    repo, _ = repo
    # A decoding param: evaluate and export rerun (train's rerun is the failed experiment's below, and the dry runs').
    assert ran(dvc(repo, "exp", "run", "-S", "evaluate.beam_size=2")) == {"evaluate", "export"}
    assert "Data and pipelines are up to date" in dvc(repo, "status")
    report = subprocess.run(["caption-diff", "HEAD"], cwd=repo, capture_output=True, text=True, env=ENVIRONMENT)
    assert report.returncode == 0, report.stderr
    assert report.stdout.startswith("## Test scores: `HEAD` → this change")
    assert re.search(r"\| metrics/scores.json\s*\| bleu1\s*\|", report.stdout)
    assert report.stdout.index("bleu1") < report.stdout.index("## Training") < report.stdout.index("## Params")
    assert re.search(r"\| params.yaml\s*\| evaluate.beam_size\s*\| 3\s*\| 2\s*\|", report.stdout)
    committed = subprocess.run(["git", "show", "HEAD:metrics/test_captions.tsv"], cwd=repo, capture_output=True,
                               text=True, check=True).stdout  # fmt: skip
    weighed = "on the same 8 test images; redrawing them with replacement (paired bootstrap, 95 %)"
    captions_changed = committed != (repo / "metrics" / "test_captions.tsv").read_text()
    assert (weighed in report.stdout) == captions_changed  # read from git and the workspace, both sides
    diff = subprocess.run(["dvc", "metrics", "diff", "HEAD", "--json"], cwd=repo, capture_output=True, text=True)
    metrics_diff = json.loads(diff.stdout)
    assert "bleu1" in metrics_diff["metrics/scores.json"]  # and nothing of the machine or of the last epoch:
    assert set(metrics_diff.get("metrics/train/metrics.json", {})) <= {"best_epoch", "best_dev_loss", "epochs_run"}
    table = subprocess.run(["caption-exps"], cwd=repo, capture_output=True, text=True, env=ENVIRONMENT)
    assert table.returncode == 0, table.stderr
    header = [cell.strip() for cell in table.stdout.splitlines()[0].strip("|").split("|")]
    assert header == ["Experiment", "evaluate.beam_size", "bleu4", "cider", "meteor", "rouge_l"]
    assert len(table.stdout.splitlines()) >= 2 + 3  # workspace, HEAD, and the experiment
    assert max(map(len, table.stdout.splitlines())) <= 120 and "data/" not in table.stdout
    missing = subprocess.run(["caption-diff", "no-such-rev"], cwd=repo, capture_output=True, text=True)
    assert missing.returncode == 1 and missing.stderr.startswith("caption-diff: error: dvc metrics diff")
    # The README's way back to the baseline: params, lock, metrics, figures and model as committed, nothing else.
    (repo / "metrics" / "figures" / "attention_1.png").write_bytes(b"a figure only the experiment drew")
    way_back = re.search(r"^(git checkout HEAD .*?)\s+# back to the baseline", README, re.MULTILINE)[1]
    subprocess.run(way_back, shell=True, cwd=repo, check=True, env=ENVIRONMENT | {"PYTHONPATH": str(repo)})
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, check=True)
    assert status.stdout == "" and "Data and pipelines are up to date" in dvc(repo, "status")
    assert json.loads((repo / "metrics" / "scores.json").read_text())["beam_size"] == 3


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


def plotted_revisions(repo, revision: str, titles: dict | None = None) -> tuple[dict, list]:
    """``dvc plots diff <revision> --json`` in ``repo``: (plot name → the revisions it holds data of, errors); each
    plot's title goes into ``titles`` if given."""
    result = run_dvc(repo, "plots", "diff", revision, "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)  # stderr: DVC's warning when a revision's plots did not load
    revisions = {name: {rev for plot in plots for rev in plot["revisions"]} for name, plots in shown["data"].items()}
    for name, plots in shown["data"].items():
        (titles if titles is not None else {})[name] = str((plots[0].get("content") or {}).get("title", {}).get("text"))
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
    titles = {}
    revisions, errors = plotted_revisions(clone, "main", titles)
    assert not errors and revisions["Loss (train vs dev)"] == {"main", "workspace"}
    # No empty plot: each plotted file exists, the optional curves only when a run logs them.
    assert all(revisions.values()) and "metrics/train/plots/metrics/by_epoch/learning_rate.tsv" in revisions
    assert titles["metrics/train/plots/metrics/by_epoch/learning_rate.tsv"] == "By epoch"  # not its file's path
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
    # The export through the artifact registry: a version tagged as `gto register captioner` tags it, then fetched.
    tag = ["git", "tag", "-a", "captioner@v0.1.0", "-m", "Registering artifact captioner version v0.1.0"]
    subprocess.run(tag, cwd=repo, check=True, env=ENVIRONMENT)
    shipped = repo.parent / "shipped"
    dvc(repo, "artifacts", "get", str(repo), "captioner", "-o", str(shipped))
    assert (shipped / "captioner.tflite").is_file() and (shipped / "saved_model" / "saved_model.pb").is_file()


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
    """Two queued experiments, each of a speed-only param (nothing reruns, so the queue itself is what is timed)."""
    repo, _ = repo
    baseline = _flat(yaml.safe_load((repo / "params.yaml").read_text()))
    sweep = {"threads": "speed.threads_per_op=2", "batch": "speed.decode_batch_size=3"}
    for name, setting in sweep.items():
        dvc(repo, "exp", "run", "--queue", "-n", name, "-S", setting)
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
    for name, setting in sweep.items():
        params, bleu4 = rows[name]
        changed = {key: value for key, value in params.items() if baseline[key] != value}
        assert changed == {setting.split("=")[0]: int(setting.split("=")[1])}
        assert 0 <= bleu4 <= 1


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
    alone = run_stage(places["alone"], "train")  # one process's weights: this one's, while the cluster trains
    outputs = {role: run.communicate(timeout=240)[0] for role, run in runs.items()}
    for role, run in runs.items():
        assert run.returncode == 0, f"{role}:\n{outputs[role][-3000:]}"
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert "2 replica(s)" in outputs["chief"] and "1 replica(s)" in alone.stdout
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
