"""CPU kernels pinned (captioner.kernels): features come out bit for bit the same whichever kernels the CPU
would make TensorFlow pick."""

import os
import subprocess
import sys

from captioner import kernels

# Extract features of a few images, then print digests of the stored float16 features and of the encoder's
# float32 output (the finer test of which kernels ran).
EXTRACT = """
import hashlib, sys
from pathlib import Path
import h5py, numpy as np
from captioner import encoders, features
paths = sorted(Path(sys.argv[1]).iterdir())[:4]
encoder = encoders.get("efficientnet_lite0")
features.extract(encoder, paths, Path(sys.argv[2]), pooling="avg", batch_size=4)
with h5py.File(sys.argv[2]) as store:
    stored = store["features"][:]
model = encoder.build("imagenet")
batch = np.stack([features.load_image(str(path), encoder.input_size, encoder.preprocess) for path in paths])
print(hashlib.sha256(stored.tobytes()).hexdigest(), hashlib.sha256(np.asarray(model(batch)).tobytes()).hexdigest())
"""
# What another CPU makes TensorFlow choose: oneDNN's graph rewrite (AVX-512 VNNI, BF16, AMX) and another ISA.
ANOTHER_CPU = {"TF_ENABLE_ONEDNN_OPTS": "1", "ONEDNN_MAX_CPU_ISA": "AVX"}


def digests(shapes_raw, tmp_path, **env) -> tuple[str, str]:
    clean = {name: value for name, value in os.environ.items() if name not in {*kernels.PORTABLE, kernels.NATIVE}}
    target = tmp_path / f"features-{len(list(tmp_path.iterdir()))}.h5"
    command = [sys.executable, "-c", EXTRACT, str(shapes_raw / "Flicker8k_Dataset"), str(target)]
    done = subprocess.run(command, env=clean | env, capture_output=True, text=True, check=True)
    return tuple(done.stdout.split())


def test_features_do_not_depend_on_the_kernels_a_cpu_would_pick(shapes_raw, tmp_path):
    pinned = digests(shapes_raw, tmp_path)
    assert digests(shapes_raw, tmp_path, **ANOTHER_CPU) == pinned
    # The test can tell: unpinned, those kernels give other float32 bits.
    native = digests(shapes_raw, tmp_path, **ANOTHER_CPU, **{kernels.NATIVE: "1"})
    assert native[1] != pinned[1]


def test_bfloat16_training_runs_native_kernels(monkeypatch):
    for name, value in kernels.PORTABLE.items():  # restored after the test, whatever it changes
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(kernels, "_before", {"TF_ENABLE_ONEDNN_OPTS": None, "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"})
    kernels.for_precision("mixed_bfloat16")
    assert "TF_ENABLE_ONEDNN_OPTS" not in os.environ and os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX512_CORE"
    kernels.for_precision("mixed_float16")
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"
