"""Readying a process (captioner.process): importing captioner changes nothing; ``prepare`` quiets TensorFlow's
start-up; what a file's bits came from (CPU, kernels) is recorded with it."""

import json
import os
import subprocess
import sys

import pytest

from captioner import process
from tests.tiny_pipeline import tf_noise

UNCHANGED = """
import os, sys
environment, finders, streams = dict(os.environ), list(sys.meta_path), (sys.stdout, sys.stderr)
import captioner, captioner.stage, captioner.process, captioner.training.config
assert dict(os.environ) == environment, set(os.environ.items()) ^ set(environment.items())
assert sys.meta_path == finders and (sys.stdout, sys.stderr) == streams
assert "tensorflow" not in sys.modules
"""


def test_importing_the_library_changes_nothing_in_the_process():
    subprocess.run([sys.executable, "-c", UNCHANGED], check=True)


# A prepared process (with a training run's threads) extracts features of a few images, then prints the thread count
# TensorFlow was given, the machine the features file records, and a digest of the encoder's float32 output.
EXTRACT = """
import hashlib, os, sys
from pathlib import Path
from captioner import process
process.prepare(threads_per_op=3)
import h5py, numpy as np
from captioner.features import encoders
from captioner.features import extraction as features
paths = sorted(Path(sys.argv[1]).iterdir())[:4]
extractor = features.Extractor(encoders.get("efficientnet_lite0"), "avg")
extractor.write(paths, Path(sys.argv[2]), batch_size=4)
with h5py.File(sys.argv[2]) as store:
    machine = store.attrs["machine"]
batch = np.stack([features.load_image(str(path), extractor.size, extractor.encoder.preprocess) for path in paths])
outputs = np.asarray(extractor.model(batch))
print(os.environ.get("TF_NUM_INTRAOP_THREADS"), hashlib.sha256(outputs.tobytes()).hexdigest(), machine)
"""


def extracted(shapes_raw, tmp_path, **env) -> tuple[list[str], str]:
    """What ``EXTRACT`` printed in the environment ``env`` (TensorFlow's own kernel variables unset but for it):
    threads, digest, the recorded machine; and its stderr."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith(("TF_", "ONEDNN_"))}
    target = tmp_path / f"features-{len(list(tmp_path.iterdir()))}.h5"
    command = [sys.executable, "-c", EXTRACT, str(shapes_raw / "Flicker8k_Dataset"), str(target)]
    done = subprocess.run(command, env=clean | env, capture_output=True, text=True, check=True)
    return done.stdout.split(" ", 2), done.stderr


@pytest.mark.e2e  # TensorFlow in processes of its own
def test_a_prepared_process_is_quiet_gets_its_threads_and_records_the_kernels_that_made_its_bits(shapes_raw, tmp_path):
    (threads, digest, machine), console = extracted(shapes_raw, tmp_path)
    assert threads == "3" and not tf_noise(console), console  # the training threads, no start-up lines
    recorded = json.loads(machine)
    assert recorded["cpu"] and recorded["tensorflow"]
    # The kernels another CPU would run (oneDNN's graph rewrite the other way round): other bits, and the record says
    # so; the start-up lines show when asked.
    other = {"TF_ENABLE_ONEDNN_OPTS": "0" if recorded["onednn_rewrite"] == "on" else "1", process.VERBOSE: "1"}
    (_, other_digest, other_machine), loud = extracted(shapes_raw, tmp_path, **other)
    assert other_digest != digest and json.loads(other_machine)["onednn_rewrite"] != recorded["onednn_rewrite"]
    assert "WARNING: All log messages before absl::InitializeLog()" in loud


def test_the_machine_record_names_cpu_isa_kernels_and_tensorflow_and_a_change_is_one_line(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse4_1 avx avx2 avx512f avx512_vnni\n")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    vnni = process.machine(cpuinfo)
    assert vnni["cpu"] == "Some CPU" and vnni["isa"] == "AVX512_CORE_VNNI" and vnni["tensorflow"]
    assert vnni["onednn_rewrite"] == "on"  # TensorFlow's default on AVX-512 VNNI
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    assert process.machine(cpuinfo) | {"isa": "AVX2", "onednn_rewrite": "off"} == process.machine(cpuinfo)
    cpuinfo.write_text("flags\t\t: fpu sse4_1 avx\n")
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS")
    assert process.machine(cpuinfo)["isa"] == "AVX" and process.machine(cpuinfo)["onednn_rewrite"] == "off"

    record = tmp_path / "machine.json"
    assert process.machine_change(record) is None  # nothing recorded yet
    record.write_text(json.dumps(process.machine()))
    assert process.machine_change(record) is None  # this machine made the committed features
    record.write_text(json.dumps(process.machine() | {"cpu": "Another CPU", "isa": "SSE41"}))
    notice = process.machine_change(record)
    assert "\n" not in notice and "(cpu Another CPU → " in notice and ", isa SSE41 → " in notice
    assert notice.startswith("note: this machine differs from the one that made the committed features")
    assert notice.endswith("dvc.lock's hashes may change, the scores should not")
    record.write_text("{not json")
    assert process.machine_change(record) is None


def test_half_precision_training_turns_the_onednn_rewrite_off(monkeypatch):
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")  # restored after the test
    process.for_precision("float32")
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1"
    process.for_precision("mixed_float16")  # else oneDNN logs an ERROR line on CPUs without AVX-512 float16
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"
