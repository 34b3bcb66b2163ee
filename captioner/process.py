"""Readying a process for the library: ``prepare``, the one call that sets anything process-wide.

Importing ``captioner`` changes nothing. Every stage (``captioner.stage.run``), the command-line tools and the
Python API (``captioner.Captioner``, ``captioner.train``) call ``prepare`` before TensorFlow starts; it sets:

- **A quiet console.** Importing TensorFlow prints ~8 lines from C++ (absl's "before InitializeLog" warning,
  oneDNN and CUDA notices, a ``cuInit`` error on a machine without a GPU) before its own log settings apply, so
  ``TF_CPP_MIN_LOG_LEVEL`` alone cannot hide them: the import, and the device start-up that follows, run with
  file descriptor 2 pointed at /dev/null (an import hook that removes itself once used). ``TF_CPP_MIN_LOG_LEVEL``
  is 2 unless set; NLTK's advice to smooth BLEU is hidden (our BLEU is the unsmoothed corpus BLEU, on purpose).
  TensorFlow's and Python's warnings and errors afterwards still show. Opt out: ``CAPTIONER_TF_LOGS=1``.
- **Pinned CPU kernels**, so that fewer of an output's bits follow the CPU that made it. TensorFlow picks CPU
  kernels by what the processor offers: its oneDNN graph rewrite is on by default only on CPUs with AVX-512 VNNI,
  BF16 or AMX, and the matrix products of its Eigen kernels call oneDNN's sgemm, which dispatches to AVX2 or
  AVX-512 code at run time. Each choice sums in another order (other last bits, other DVC hashes, the same
  scores). ``TF_ENABLE_ONEDNN_OPTS=0`` and ``ONEDNN_MAX_CPU_ISA=AVX2`` pin them (``tests/test_process.py``; their
  speed: ``bench/kernels.py``); bits can still differ between CPU models (the README's rule for teams). Opt out:
  ``CAPTIONER_NATIVE_KERNELS=1`` (the fastest kernels of each CPU), as ``train.precision: mixed_bfloat16`` does.
- **For training**, each TensorFlow op's CPU threads (``TF_NUM_INTRAOP_THREADS`` from ``train.threads_per_op``;
  0 leaves TensorFlow's default, all cores) and the kernels ``train.precision`` needs.

A process that started TensorFlow before the first call keeps TensorFlow as it was started: ``prepare`` then
changes nothing. Later calls change nothing either.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import sys
import warnings

VERBOSE = "CAPTIONER_TF_LOGS"
NATIVE = "CAPTIONER_NATIVE_KERNELS"
PORTABLE = {
    "TF_ENABLE_ONEDNN_OPTS": "0",  # Eigen's kernels, as TensorFlow runs them on every CPU without AVX-512 VNNI
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN's sgemm inside them: the AVX2 code on AVX-512 CPUs too
}
_before = {name: os.environ.get(name) for name in PORTABLE}
_prepared = False


def prepare(threads_per_op: int | None = None, precision: str = "float32") -> None:
    """Ready this process before TensorFlow starts (see the module's docstring): a quiet console and pinned kernels;
    for a training run also ``threads_per_op`` CPU threads per op (0: all cores) and ``precision``'s kernels."""
    global _prepared
    if _prepared or "tensorflow" in sys.modules:
        return
    _prepared = True
    quiet_tensorflow()
    pin()
    if threads_per_op is None:
        return
    # TensorFlow starts here, before the thread count is set, as it always did in this pipeline: the count then
    # sizes each op's pool but not the one the import makes. Set before the import it reaches both, and the default
    # model, trained on the same kernels, came out 2e-6 off in its weights (captions and scores unchanged).
    import tensorflow  # noqa: F401

    if threads_per_op:
        os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads_per_op)
    for_precision(precision)


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
    """For a training run at ``precision``. bfloat16 arithmetic runs on AVX-512 BF16 or AMX only: its runs go
    native. Under ``mixed_float16`` oneDNN would log an ERROR-level line on CPUs without AVX-512 float16 (and fall
    back to Eigen's kernels anyway), so its graph rewrite stays off whatever the pins."""
    if precision == "mixed_bfloat16":
        unpin()
    if precision == "mixed_float16":
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"


@contextlib.contextmanager
def stderr_silenced():
    """File descriptor 2 (what C++ libraries write to) pointed at /dev/null for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        with stderr_silenced():
            self.loader.exec_module(module)
            # Device start-up logs the missing CUDA driver; in a cluster (TF_CONFIG) it must wait for the
            # multi-worker strategy, which configures the collective ops before any device starts.
            if not os.environ.get("TF_CONFIG"):
                module.config.list_logical_devices()


class _QuietTensorFlow(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` as usual, once, and loads it through ``_QuietLoader``."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def quiet_tensorflow() -> None:
    """Hide TensorFlow's start-up lines from the next ``import tensorflow`` on (unless CAPTIONER_TF_LOGS is set),
    and NLTK's advice to smooth BLEU, which it gives for every caption of a small split with no 4-gram match."""
    if os.environ.get(VERBOSE) or "tensorflow" in sys.modules:
        return
    warnings.filterwarnings("ignore", category=UserWarning, module=r"nltk\.translate\.bleu_score")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's own INFO lines, once its logging is up
    if not any(isinstance(finder, _QuietTensorFlow) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlow())
