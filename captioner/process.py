"""Readying a process for the library: ``prepare``, the one call that sets anything process-wide.

Importing ``captioner`` changes nothing. Every stage (``captioner.stage.run``), the command-line tools and the
Python API (``captioner.Captioner``, ``captioner.train``) call ``prepare`` before TensorFlow starts; it sets:

- **A quiet console.** Importing TensorFlow prints ~8 lines from C++ (absl's "before InitializeLog" warning,
  oneDNN and CUDA notices, a ``cuInit`` error on a machine without a GPU) before its own log settings apply, so
  ``TF_CPP_MIN_LOG_LEVEL`` alone cannot hide them: the import, and the device start-up that follows, run with
  file descriptor 2 pointed at /dev/null (an import hook that removes itself once used). ``TF_CPP_MIN_LOG_LEVEL``
  is 2 unless set; NLTK's advice to smooth BLEU is hidden (our BLEU is the unsmoothed corpus BLEU, on purpose).
  TensorFlow's and Python's warnings and errors afterwards still show. Opt out: ``CAPTIONER_TF_LOGS=1``.
- **CPU kernels as TensorFlow picks them**, recorded. TensorFlow picks CPU kernels by what the processor offers
  (its oneDNN graph rewrite is on by default only on CPUs with AVX-512 VNNI, BF16 or AMX), and each choice sums in
  its own order: other last bits, other DVC hashes, the same scores. No setting made every CPU agree: Eigen's kernels
  gave an AVX2 and an AVX-512 CPU other features whatever oneDNN's instruction set; oneDNN's rewrite gave them the
  same features but the training's bits follow its instruction set, and held to AVX2 code it logs ERROR lines
  (``bench/kernels.py``, docs/benchmarks.md). So nothing is pinned; ``machine()`` says which CPU and kernels made a
  file (the features file, the model card, ``metrics/machine.json``) and the extract_features stage says in one
  line when this machine differs from the committed one.
- **For training**, each TensorFlow op's CPU threads (``TF_NUM_INTRAOP_THREADS`` from ``train.threads_per_op``;
  0 leaves TensorFlow's default, all cores) and the kernels ``train.precision`` needs.

A process that started TensorFlow before the first call keeps TensorFlow as it was started: ``prepare`` then
changes nothing. Later calls change nothing either.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import os
import sys
import warnings
from pathlib import Path

VERBOSE = "CAPTIONER_TF_LOGS"
_prepared = False


def prepare(threads_per_op: int | None = None, precision: str = "float32") -> None:
    """Ready this process before TensorFlow starts (see the module's docstring): a quiet console; for a training run
    also ``threads_per_op`` CPU threads per op (0: all cores) and ``precision``'s kernels."""
    global _prepared
    if _prepared or "tensorflow" in sys.modules:
        return
    _prepared = True
    quiet_tensorflow()
    if threads_per_op is None:
        return
    # TensorFlow starts here, before the thread count is set, as it always did in this pipeline: the count then
    # sizes each op's pool but not the one the import makes. Set before the import it reaches both, and the default
    # model, trained on the same kernels, came out 2e-6 off in its weights (captions and scores unchanged).
    import tensorflow  # noqa: F401

    if threads_per_op:
        os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads_per_op)
    for_precision(precision)


# oneDNN's instruction-set levels (ONEDNN_MAX_CPU_ISA's names), most capable first, and the CPU flag of each.
_ISA_LEVELS = {"AVX512_CORE_AMX": "amx_tile", "AVX512_CORE_BF16": "avx512_bf16", "AVX512_CORE_VNNI": "avx512_vnni"}
_ISA_LEVELS |= {"AVX512_CORE": "avx512f", "AVX2": "avx2", "AVX": "avx", "SSE41": "sse4_1"}


def machine(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict:
    """What decides the last bits of this process's float results, as far as known: the CPU's model, the
    instruction set oneDNN's code uses (the CPU's best, held down by ``ONEDNN_MAX_CPU_ISA``), oneDNN's graph rewrite
    on or off, and TensorFlow's version. Read before TensorFlow starts or after, not during."""
    fields = {}
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    levels = list(_ISA_LEVELS)
    best = next((level for level, flag in _ISA_LEVELS.items() if flag in flags), None)
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if best and cap in levels and levels.index(cap) > levels.index(best):
        best = cap
    try:
        tensorflow = importlib.metadata.version("tensorflow")
    except importlib.metadata.PackageNotFoundError:
        tensorflow = None
    rewrite = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    default = "on" if flags & {"avx512_vnni", "avx512_bf16", "amx_tile"} else "off"  # TensorFlow's own choice
    return {
        "cpu": fields.get("model name") or os.uname().machine,
        "isa": best or os.uname().machine,
        "onednn_rewrite": {"1": "on", "0": "off"}.get(rewrite, default),
        "tensorflow": tensorflow,
    }


def machine_change(record: Path) -> str | None:
    """When ``record`` (a ``machine()`` in a JSON file in git, written with the features) names another machine than
    this one, the one line saying so: the bytes made here, and so ``dvc.lock``'s hashes, may differ."""
    import json

    now, before = machine(), None
    try:
        before = json.loads(record.read_text())
    except (OSError, ValueError):
        pass  # no record yet (or not one we can read): nothing to compare with
    if not isinstance(before, dict) or before == now:
        return None
    differs = ", ".join(f"{key} {before.get(key)} → {now[key]}" for key in now if now[key] != before.get(key))
    return (
        f"note: this machine differs from the one that made the committed features ({differs}; {record}): "
        "dvc.lock's hashes may change, the scores should not"
    )


def for_precision(precision: str) -> None:
    """For a training run at ``precision``. Under ``mixed_float16`` oneDNN would log an ERROR-level line on CPUs
    without AVX-512 float16 (and fall back to Eigen's kernels anyway), so its graph rewrite goes off."""
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
