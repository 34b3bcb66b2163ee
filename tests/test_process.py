"""Readying a process (captioner.process): importing captioner changes nothing; ``prepare`` quiets TensorFlow's
start-up and pins the CPU kernels, so features come out bit for bit the same whichever kernels the CPU would make
TensorFlow pick."""

import os
import subprocess
import sys

import pytest

from captioner import process
from tests.tiny_pipeline import tf_noise

UNCHANGED = """
import os, sys
environment, finders, streams = dict(os.environ), list(sys.meta_path), (sys.stdout, sys.stderr)
import captioner, captioner.stage, captioner.process, captioner.config
assert dict(os.environ) == environment, set(os.environ.items()) ^ set(environment.items())
assert sys.meta_path == finders and (sys.stdout, sys.stderr) == streams
assert "tensorflow" not in sys.modules
"""


def test_importing_the_library_changes_nothing_in_the_process():
    subprocess.run([sys.executable, "-c", UNCHANGED], check=True)


# A prepared process (with a training run's threads) extracts features of a few images, then prints the thread count
# TensorFlow was given and digests of the stored float16 features and of the encoder's float32 output (the finer
# test of which kernels ran).
EXTRACT = """
import hashlib, os, sys
from pathlib import Path
from captioner import process
process.prepare(threads_per_op=3)
import h5py, numpy as np
from captioner import encoders, features
paths = sorted(Path(sys.argv[1]).iterdir())[:4]
extractor = features.Extractor(encoders.get("efficientnet_lite0"), "avg")
extractor.write(paths, Path(sys.argv[2]), batch_size=4)
with h5py.File(sys.argv[2]) as store:
    stored = store["features"][:]
batch = np.stack([features.load_image(str(path), extractor.size, extractor.encoder.preprocess) for path in paths])
outputs = np.asarray(extractor.model(batch))
print(os.environ.get("TF_NUM_INTRAOP_THREADS"), *(hashlib.sha256(a.tobytes()).hexdigest() for a in (stored, outputs)))
"""
# What another CPU makes TensorFlow choose: oneDNN's graph rewrite (AVX-512 VNNI, BF16, AMX) and another ISA.
ANOTHER_CPU = {"TF_ENABLE_ONEDNN_OPTS": "1", "ONEDNN_MAX_CPU_ISA": "AVX"}


def extracted(shapes_raw, tmp_path, **env) -> tuple[list[str], str]:
    """What ``EXTRACT`` printed in the environment ``env`` (the pins' own variables unset but for it), and its
    stderr."""
    clean = {name: value for name, value in os.environ.items() if name not in {*process.PORTABLE, process.NATIVE}}
    target = tmp_path / f"features-{len(list(tmp_path.iterdir()))}.h5"
    command = [sys.executable, "-c", EXTRACT, str(shapes_raw / "Flicker8k_Dataset"), str(target)]
    done = subprocess.run(command, env=clean | env, capture_output=True, text=True, check=True)
    return done.stdout.split(), done.stderr


@pytest.mark.e2e  # TensorFlow in processes of its own
def test_a_prepared_process_is_quiet_gets_its_threads_and_extracts_the_same_bits_whatever_the_cpu_would_pick(
    shapes_raw, tmp_path
):
    pinned, console = extracted(shapes_raw, tmp_path)
    assert pinned[0] == "3" and not tf_noise(console), console  # the training threads, no start-up lines
    assert extracted(shapes_raw, tmp_path, **ANOTHER_CPU)[0] == pinned
    # The test can tell: unpinned, those kernels give other float32 bits; and the start-up lines show when asked.
    native, loud = extracted(shapes_raw, tmp_path, **ANOTHER_CPU, **{process.NATIVE: "1", process.VERBOSE: "1"})
    assert native[2] != pinned[2] and "WARNING: All log messages before absl::InitializeLog()" in loud


def test_bfloat16_training_runs_native_kernels(monkeypatch):
    for name, value in process.PORTABLE.items():  # restored after the test, whatever it changes
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(process, "_before", {"TF_ENABLE_ONEDNN_OPTS": None, "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"})
    process.for_precision("mixed_bfloat16")
    assert "TF_ENABLE_ONEDNN_OPTS" not in os.environ and os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX512_CORE"
    process.for_precision("mixed_float16")
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"
