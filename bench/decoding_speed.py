"""Decoding speed: the compiled loops (captioner.model.decoding) against the Python-loop decoding they replaced (kept as
the tests' reference, tests/reference_decoding.py), and the caption command's cold and warm times, repository model
against exported model. Methods take turns, round after round, in one run.

    dvc repro            # or a Flickr8k run: the bench reads models/ and data/ as the pipeline left them
    python bench/decoding_speed.py [--images 500] [--rounds 3] [--caption-images 20]

Prints captions/s per method (the best round), whether each compiled loop picks the reference's captions, the
ratios the issue set (compiled greedy ÷ Python-loop greedy ≥ 2; beam 3 ÷ greedy ≥ 0.25, compiled), and the caption
command's process-start-to-first-caption time and warm seconds per image, repository vs exported model.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))  # tests/reference_decoding.py, the Python-loop decoding

from captioner import process  # noqa: E402

process.prepare()  # as the stages and the caption command run: before TensorFlow starts
from captioner import export  # noqa: E402
from captioner.captioning import Captioner  # noqa: E402
from captioner.datasets import read_captions  # noqa: E402
from captioner.features.extraction import FeatureFile  # noqa: E402
from captioner.layout import Layout  # noqa: E402
from captioner.model import decoding  # noqa: E402
from captioner.model.decoding import DecodeSettings  # noqa: E402
from captioner.text import Vocabulary  # noqa: E402
from tests import reference_decoding as reference  # noqa: E402

BATCH = 256  # evaluate.batch_size's default: the images evaluate decodes together, greedy or beam


def best_rate(function, count: int, rounds: list) -> None:
    started = time.perf_counter()
    function()
    rounds.append(count / (time.perf_counter() - started))


def decoding_rates(captioner: Captioner, features: np.ndarray, max_len: int, rounds: int) -> dict[str, float]:
    """Captions/s of each method, ``BATCH`` images a call (as evaluate decodes), the best of ``rounds``."""
    stepper, rows, read = captioner.stepper, np.arange(len(features)), features.__getitem__
    ends, beam = (Vocabulary.start_id, Vocabulary.end_id), {"beam_size": 3, "batch_size": BATCH}
    settings = DecodeSettings(beam_size=3, max_len=max_len)
    methods = {
        "Python-loop greedy": lambda: reference.greedy(stepper, read, rows, *ends, max_len, BATCH),
        "compiled greedy": lambda: decoding.greedy(stepper, read, rows, max_len, BATCH).ids,
        "Python-loop beam 3": lambda: reference.beam_search(stepper, read, rows, *ends, max_len, **beam)[0],
        "compiled beam 3": lambda: decoding.beam_search(stepper, read, rows, settings, BATCH).ids,
    }
    outputs = {name: method() for name, method in methods.items()}  # traced once, and the captions compared
    for kind in ("greedy", "beam 3"):
        same = np.array_equal(outputs[f"Python-loop {kind}"], outputs[f"compiled {kind}"])
        print(f"compiled {kind} picks the Python loop's captions: {'yes' if same else 'NO'} ({len(rows)} images)")
    measured: dict[str, list] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, method in methods.items():
            best_rate(method, len(rows), measured[name])
    return {name: max(rates) for name, rates in measured.items()}


def cold_start(command: list[str]) -> float:
    """Seconds from process start to the caption printed (the command captions one image and exits)."""
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def warm_seconds_per_image(caption, paths: list[Path]) -> float:
    caption(paths[:1])  # traced
    started = time.perf_counter()
    for path in paths:
        caption([path])
    return (time.perf_counter() - started) / len(paths)


def caption_times(captioner: Captioner, exported: Path, paths: list[Path], max_len: int) -> None:
    image, caption = str(paths[0]), shutil.which("caption")  # the installed command, as a user runs it
    repository = [caption, image, "--beam", "3", "--max-len", str(max_len)]
    shipped = [caption, image, "--export", str(exported)]
    colds = {"repository model": [], "exported model": []}
    for _ in range(2):
        colds["repository model"].append(cold_start(repository))
        colds["exported model"].append(cold_start(shipped))
    serve = export.load(exported)
    import tensorflow as tf

    warm = {
        "repository model": warm_seconds_per_image(lambda p: captioner.caption(p, 3, max_len), paths),
        "exported model": warm_seconds_per_image(
            lambda p: serve(images=tf.constant([path.read_bytes() for path in p])), paths
        ),
    }
    for name in colds:
        print(f"caption, {name}: cold start {min(colds[name]):.1f} s, warm {warm[name] * 1000:.0f} ms per image")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--caption-images", type=int, default=20)
    arguments = parser.parse_args()

    captioner = Captioner.load(Layout().models)
    card, vocab = captioner.trained.card, captioner.trained.vocab
    max_len = vocab.max_length
    with FeatureFile(Layout().features_file(card["encoder"]), card["encoder"]) as store:
        images = sorted({image for image, _ in read_captions(Layout().split_captions("test"))} & set(store.row_of))
        images = images[: arguments.images]
        features = store.read(np.array([store.row_of[image] for image in images]), not captioner.stepper.reads_grid)
    spec = captioner.trained.spec
    print(f"{card.get('dataset')}: {spec.rnn} {spec.arch} {spec.units}, {len(images)} test images, max_len {max_len}")
    rates = decoding_rates(captioner, features, max_len, arguments.rounds)
    for name, rate in rates.items():
        print(f"{name:<20} {rate:8.1f} captions/s")
    speedup = rates["compiled greedy"] / rates["Python-loop greedy"]
    print(f"compiled greedy ÷ Python-loop greedy = {speedup:.2f} (goal ≥ 2)")
    compiled, loop = (rates[f"{kind} beam 3"] / rates[f"{kind} greedy"] for kind in ("compiled", "Python-loop"))
    print(f"beam 3 ÷ greedy: compiled {compiled:.3f} (goal ≥ 0.25), Python loop {loop:.3f}")
    paths = [Layout().images / image for image in images[: arguments.caption_images]]
    with tempfile.TemporaryDirectory() as folder:
        exported = Path(folder) / "export"
        export.export(captioner, exported, DecodeSettings(beam_size=3, max_len=max_len))
        caption_times(captioner, exported, paths, max_len)


if __name__ == "__main__":
    main()
