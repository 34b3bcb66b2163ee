"""CPU threads per TensorFlow op (``train.threads_per_op``): the params' decoder's train step with each op on one
thread (two ops side by side) vs TensorFlow's default (every op on all cores), in two processes taking turns.

    dvc repro            # or dvc exp run …: the bench reads data/ and params.yaml as the pipeline left them
    python bench/threads.py [--steps 30] [--rounds 6]

TensorFlow sizes its thread pools once per process, so each setting gets its own worker process; they build
the same model on the same batches (the train stage's, seed 0) and time ``--steps`` steps in turns, round after
round, so a change in the machine's load hits both alike. Prints ms/step of each and their ratio.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable

SETTINGS = {"all cores (threads_per_op 0)": "0", "one thread (threads_per_op 1)": "1"}


def train_steps(steps: int) -> tuple[str, Callable[[], None], Callable[[], str]]:
    """(a description, a function running ``steps`` steps, one giving a digest of the weights): the params' decoder's
    train step, compiled and warm, on the train stage's first batches (seed 0)."""
    import hashlib
    import itertools

    import numpy as np

    from captioner.datasets import read_captions
    from captioner.features.extraction import FeatureFile
    from captioner.layout import Layout
    from captioner.model import decoder
    from captioner.stage import declared_params
    from captioner.text import Vocabulary
    from captioner.training import batching
    from captioner.training import train as training
    from captioner.training.config import TrainConfig
    from captioner.training.trainer import Trainer

    params = declared_params("train")
    config = TrainConfig.from_params(params)
    spec, settings = config.decoder, params["train"]
    vocab = Vocabulary.load(Layout().vocab)
    with FeatureFile(Layout().features_file(params["encoder"]), params["encoder"]) as store:
        pooled = not spec.reads_grid(store.pooling)
        captions, shape = read_captions(Layout().split_captions("train")), store.shape(pooled)
        rows, sequences, _ = batching.encode_captions(captions, store.row_of, vocab)
        data = batching.CaptionBatches(store.reader(pooled), shape, rows, sequences, settings["batch_size"], seed=0)
        batches = [batch for batch, _ in zip(itertools.cycle(data), range(steps), strict=False)]
    training.seed_everything(0)
    training.deterministic_ops()
    architecture = decoder.architecture(spec, len(vocab))
    trainer = Trainer(architecture.build(shape), architecture.head, config)
    step = trainer.train_step(data.element_spec)

    def run() -> None:
        for features, tokens in batches:
            step(features, tokens)[0].numpy()

    for features, tokens in batches[:3]:  # compile and warm up
        step(features, tokens)[0].numpy()

    def digest() -> str:
        weights = trainer.model.get_weights()
        return hashlib.sha256(b"".join(np.asarray(w).tobytes() for w in weights)).hexdigest()[:12]

    return f"{spec.arch} {spec.rnn.upper()}-{spec.units}, batch {settings['batch_size']}", run, digest


def worker(steps: int) -> None:
    """Build the step, then time ``steps`` of it for every line read from stdin, printing the seconds."""
    import time

    description, run, _ = train_steps(steps)
    print(f"ready {description}", flush=True)
    for _ in sys.stdin:
        started = time.perf_counter()
        run()
        print(time.perf_counter() - started, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per worker and round")
    parser.add_argument("--rounds", type=int, default=6, help="rounds in which the workers take turns")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker:
        return worker(arguments.steps)
    workers = {}
    for name, threads in SETTINGS.items():
        environment = {key: value for key, value in os.environ.items() if key != "TF_NUM_INTRAOP_THREADS"}
        if threads != "0":
            environment["TF_NUM_INTRAOP_THREADS"] = threads
        workers[name] = subprocess.Popen(
            [sys.executable, __file__, "--worker", "--steps", str(arguments.steps)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=environment,
        )  # fmt: skip
        print(f"{name}: {workers[name].stdout.readline().strip()}")  # one at a time: warm-up is not timed
    spent = dict.fromkeys(workers, 0.0)
    for _ in range(arguments.rounds):
        for name, process in workers.items():
            process.stdin.write("go\n")
            process.stdin.flush()
            spent[name] += float(process.stdout.readline())
    for process in workers.values():
        process.stdin.close()
        process.wait()
    per_step = {name: seconds / (arguments.rounds * arguments.steps) for name, seconds in spent.items()}
    for name, seconds in per_step.items():
        print(f"  {name:>30}: {seconds * 1e3:.1f} ms/step")
    default, single = per_step.values()
    print(f"  step time, one thread per op ÷ all cores: {single / default:.2f}")


if __name__ == "__main__":
    main()
