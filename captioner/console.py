"""A quiet console: TensorFlow's start-up lines hidden, in the one place every stage and the caption command
import first (``captioner/__init__.py``).

Importing TensorFlow prints ~8 lines from C++ (absl's "before InitializeLog" warning, oneDNN and CUDA
notices, a ``cuInit`` error on a machine without a GPU) before its own log settings apply, so
``TF_CPP_MIN_LOG_LEVEL`` alone cannot hide them. The import, and the device start-up that follows,
run with file descriptor 2 pointed at /dev/null instead; TensorFlow's and Python's warnings and errors
afterwards still show. ``CAPTIONER_TF_LOGS=1`` shows everything again.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import sys
import warnings

VERBOSE = "CAPTIONER_TF_LOGS"


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
    and warnings that tell a user nothing: NLTK's BLEU advice to smooth, which it gives for every caption of a
    small split with no 4-gram match (our BLEU is the unsmoothed corpus BLEU, on purpose)."""
    if os.environ.get(VERBOSE) or "tensorflow" in sys.modules:
        return
    warnings.filterwarnings("ignore", category=UserWarning, module=r"nltk\.translate\.bleu_score")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's own INFO lines, once its logging is up
    if not any(isinstance(finder, _QuietTensorFlow) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlow())
