"""Ensembles of 1, 2, … N members side by side: test scores and decoding speed.

    dvc repro            # with members in the ensemble param, e.g. -S '+ensemble.seed2={train: {seed: 2}}'
    python bench/ensemble.py [--beam 3] [--reverse]

Reads data/, models/ and ensemble/ as the pipeline left them. For k = 1 … N it decodes every test image
with the first k members (models/ first, then the ensemble param's members in order; ``--reverse``: the last
member first, models/ last) by batched beam search, and prints BLEU-1…4, CIDEr-D, METEOR (when Java is there)
and captions/s of the decoding alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from captioner import process

process.prepare()  # as the evaluate stage runs: before TensorFlow starts
from captioner.datasets import read_captions, split_references  # noqa: E402
from captioner.evaluation import metrics  # noqa: E402
from captioner.features.extraction import FeatureFile  # noqa: E402
from captioner.layout import Layout  # noqa: E402
from captioner.model import decoding  # noqa: E402
from captioner.model.checkpoint import Trained  # noqa: E402
from captioner.model.decoding import DecodeSettings  # noqa: E402
from captioner.model.ensemble import members as ensemble_of  # noqa: E402
from captioner.model.ensemble import stepper_of  # noqa: E402
from captioner.stage import declared_params  # noqa: E402
from captioner.text import Vocabulary  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--beam", type=int, default=3, help="beam size (1: greedy)")
    parser.add_argument("--reverse", action="store_true", help="the last member first, models/ last")
    arguments = parser.parse_args()
    params = declared_params("evaluate")
    vocab = Vocabulary.load(Layout().vocab)
    others = [Layout().ensemble / name for name in params["ensemble"]]
    members = ensemble_of(Trained.load(Layout().models), others)
    directories = [Layout().models, *others]
    if arguments.reverse:
        members, directories = members[::-1], directories[::-1]
    with FeatureFile(Layout().features_file(params["encoder"]), params["encoder"]) as store:
        images, rows, references = split_references(read_captions(Layout().split_captions("test")), store.row_of)
        names = ", ".join(str(directory) for directory in directories)
        print(f"{len(images)} test images, beam {arguments.beam}, members: {names}")
        print("| members | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | CIDEr-D | METEOR | captions/s |")
        print("|---|---|---|---|---|---|---|---|")
        for count in range(1, len(members) + 1):
            chosen = members[:count]
            stepper = stepper_of(chosen)
            read = store.reader(not stepper.reads_grid)
            settings = dataclasses.replace(DecodeSettings(**params["evaluate"]), beam_size=arguments.beam)
            started = time.perf_counter()
            generated = decoding.decode(stepper, read, rows, settings).ids
            rate = len(rows) / (time.perf_counter() - started)
            hypotheses = [vocab.decode(ids) for ids in generated]
            scores = metrics.corpus_bleu(references, hypotheses) | metrics.coco_scores(references, hypotheses)[0]
            cells = [scores[f"bleu{n}"] for n in range(1, 5)] + [scores["cider"], scores.get("meteor", np.nan)]
            print(f"| {count} | " + " | ".join(f"{value:.4f}" for value in cells) + f" | {rate:.1f} |")


if __name__ == "__main__":
    main()
