"""Memory at COCO scale: peak RSS of a training slice and of test decoding, at 10k vs 120k images.

    python bench/scale.py [--images 10000 120000] [--folder /tmp/captioner-scale] [--keep]

Writes, per size, a synthetic features file laid out as extract_features writes it (float16, one chunk
per image, the 7×7×1280 grid of an EfficientNet; 15 GB at 120k images) and five synthetic captions per
image in the clean_captions format, then in a fresh process for each size does what the train and
evaluate stages do with them: read the captions, encode them, train an init-inject decoder (pooled
vectors) and an attention decoder (the grid) for a slice of an epoch, then greedy- and beam-decode
test images. Prints each process's peak RSS and the ratio; the files are removed unless --keep.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

GRID, CHANNELS, CAPTIONS_PER_IMAGE, WORDS = 7, 1280, 5, 5000
STEPS, DECODED = 40, 256


def write_dataset(folder: Path, images: int) -> None:
    """A features file of ``images`` grids and their captions (train.tsv format); vocabulary of ``WORDS``."""
    import h5py

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"{index:012d}.jpg" for index in range(images)]
    block = rng.random((1000, GRID, GRID, CHANNELS), dtype=np.float32).astype(np.float16)
    with h5py.File(folder / "features.h5", "w") as store:
        shape = (GRID, GRID, CHANNELS)
        features = store.create_dataset("features", (images, *shape), dtype="float16", chunks=(1, *shape))
        for begin in range(0, images, len(block)):
            end = min(begin + len(block), images)
            features[begin:end] = block[: end - begin] + np.float16(begin % 7)  # not one repeated image
        store.attrs.update(encoder="synthetic", pooling="grid", weights="none", weights_param="none", input_size=224)
        store.create_dataset("image_ids", data=np.array(names, dtype=object), dtype=h5py.string_dtype())
    lengths = rng.integers(8, 17, size=images * CAPTIONS_PER_IMAGE)
    words = rng.integers(0, WORDS, size=int(lengths.sum()))
    with open(folder / "train.tsv", "w") as out:
        offset = 0
        for index, length in enumerate(lengths):
            caption = " ".join(f"w{word}" for word in words[offset : offset + length])
            out.write(f"{names[index // CAPTIONS_PER_IMAGE]}\t<start> {caption} <end>\n")
            offset += length


def measure(folder: Path) -> dict:
    """In this (fresh) process: the train stage's reading and a training slice of both decoder kinds, then
    decoding; the peak RSS and the seconds each part took."""
    from captioner.datasets import read_captions
    from captioner.features.extraction import FeatureFile
    from captioner.model import decoding
    from captioner.model.decoder import Stepper, architecture
    from captioner.model.decoding import DecodeSettings
    from captioner.model.spec import DecoderSpec
    from captioner.stage import declared_params
    from captioner.text import Vocabulary
    from captioner.training.batching import encode_split
    from captioner.training.config import TrainConfig
    from captioner.training.trainer import Trainer, frozen_run

    defaults = TrainConfig.from_params(declared_params("train"))  # the params' train settings
    seconds = {}
    started = time.perf_counter()
    vocab = Vocabulary([f"w{index}" for index in range(WORDS)], max_length=20)
    with FeatureFile(folder / "features.h5", "synthetic") as store:
        encoded = {"train": encode_split("train", read_captions(folder / "train.tsv"), store.row_of, vocab)}
        seconds["read"] = time.perf_counter() - started
        for arch in ("inject", "attention"):
            started = time.perf_counter()
            spec = DecoderSpec("gru", arch, units=256, embedding_dim=128, dropout=0.0, attention_units=128)
            built = architecture(spec, len(vocab))
            model = built.build(store.shape(not spec.reads_grid(store.pooling)))
            config = dataclasses.replace(defaults, decoder=spec, batch_size=64, learning_rate=1e-3, seed=0)
            run = frozen_run(built, config, store, encoded)
            batches = run.batches["train"]
            step = Trainer(model, built.head, config).train_step(batches.element_spec)
            for done, (features, tokens) in enumerate(batches):
                step(features, tokens)
                if done + 1 == STEPS:
                    break
            rows = np.linspace(0, len(store.row_of) - 1, DECODED).astype(np.int64)  # spread over the file
            stepper = Stepper(built)
            decoding.greedy(stepper, run.read, rows, 16)
            decoding.beam_search(stepper, run.read, rows, DecodeSettings(beam_size=3, max_len=16))
            seconds[arch] = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"peak_rss_mb": peak, "captions": len(encoded["train"][0]), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs="+", default=[10_000, 120_000])
    parser.add_argument("--folder", type=Path, default=Path("/tmp/captioner-scale"))
    parser.add_argument("--keep", action="store_true", help="keep the synthetic files")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child process
    arguments = parser.parse_args()
    if arguments.measure:
        print(json.dumps(measure(arguments.measure)))
        return
    results = {}
    for images in arguments.images:
        folder = arguments.folder / str(images)
        if not (folder / "train.tsv").exists():
            started = time.perf_counter()
            write_dataset(folder, images)
            size = (folder / "features.h5").stat().st_size / 2**30
            print(f"{images} images: wrote {size:.1f} GB of features in {time.perf_counter() - started:.0f} s")
        child = subprocess.run(
            [sys.executable, __file__, "--measure", str(folder)], capture_output=True, text=True, check=False
        )
        if child.returncode:
            sys.exit(f"measuring {images} images failed:\n{child.stderr[-3000:]}")
        results[images] = json.loads(child.stdout.strip().splitlines()[-1])
        parts = ", ".join(f"{name} {value:.0f} s" for name, value in results[images]["seconds"].items())
        print(
            f"{images:>7} images, {results[images]['captions']} captions: peak RSS "
            f"{results[images]['peak_rss_mb']:.0f} MB ({parts})"
        )
        if not arguments.keep:
            shutil.rmtree(folder)
    smallest, largest = min(results), max(results)
    ratio = results[largest]["peak_rss_mb"] / results[smallest]["peak_rss_mb"]
    print(f"peak RSS, {largest} ÷ {smallest} images: {ratio:.2f}x ({largest / smallest:.0f}x the images)")


if __name__ == "__main__":
    main()
