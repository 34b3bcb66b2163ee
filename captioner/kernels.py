"""CPU kernels pinned, so that an output's bytes follow its inputs and params, not the CPU that made it.

TensorFlow picks CPU kernels by what the processor offers: its oneDNN graph rewrite is on by default only on
CPUs with AVX-512 VNNI, BF16 or AMX, and the matrix products of its Eigen kernels call oneDNN's sgemm, which
dispatches to AVX2 or AVX-512 code at run time. Each choice sums in another order, so the same features
file, model and curves came out with other last bits (other DVC hashes) on another CPU, though every score
agreed. Measured here (AVX2): turning the rewrite on, or capping oneDNN at AVX, changes the features file's
hash; with the pins below neither does (``tests/test_kernels.py``; their speed: ``bench/kernels.py``).

``CAPTIONER_NATIVE_KERNELS=1`` lifts the pins (the fastest kernels of each CPU, hashes of that CPU), as does
``train.precision: mixed_bfloat16``, which needs AVX-512 BF16 or AMX to be worth running on a CPU.
"""

from __future__ import annotations

import os

NATIVE = "CAPTIONER_NATIVE_KERNELS"
PORTABLE = {
    "TF_ENABLE_ONEDNN_OPTS": "0",  # Eigen's kernels, as TensorFlow runs them on every CPU without AVX-512 VNNI
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN's sgemm inside them: the AVX2 code on AVX-512 CPUs too
}
_before = {name: os.environ.get(name) for name in PORTABLE}


def pin() -> None:
    """Before TensorFlow starts: the portable kernels, unless CAPTIONER_NATIVE_KERNELS=1."""
    if os.environ.get(NATIVE) != "1":
        os.environ.update(PORTABLE)


def unpin() -> None:
    """Before TensorFlow starts: the kernels TensorFlow would choose itself (the environment as it came)."""
    for name, value in _before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def for_precision(precision: str) -> None:
    """Before TensorFlow starts, for a training run at ``precision``. bfloat16 arithmetic runs on AVX-512 BF16
    or AMX only: its runs go native. Under ``mixed_float16`` oneDNN would log an ERROR-level line on CPUs without
    AVX-512 float16 (and fall back to Eigen's kernels anyway), so its graph rewrite stays off whatever the pins."""
    if precision == "mixed_bfloat16":
        unpin()
    if precision == "mixed_float16":
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
