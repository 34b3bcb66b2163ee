"""Decoding speed: batched beam search vs a per-image, per-token predict loop, side by side.

    dvc repro            # or a Flickr8k run: the bench reads models/ and data/ as the pipeline left them
    python bench/decoding_speed.py [--images 500] [--seed-images 50]

The seeds caption one image at a time, calling ``model.predict`` on the whole padded prefix for
every new word, greedily. Ours runs the trained decoder one step at a time over all images and
beams at once. Prints captions/s of the per-token loop, of our batched greedy and of our batched
beam-3 search, and the ratio beam-3 ÷ per-token loop (goal ≥ 10×). The per-token loop is timed on
``--seed-images`` images and reported per caption, since it costs the same for every image.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from captioner import decoding
from captioner.checkpoint import Trained
from captioner.datasets import read_captions
from captioner.decoder import Stepper
from captioner.features import FeatureFile
from captioner.layout import Layout
from captioner.stage import declared_params
from captioner.text import Vocabulary


def seed_loop(model, features: np.ndarray, vocab: Vocabulary, max_len: int) -> list[list[int]]:
    """The tutorial generate_desc: per image, per word, predict on the padded prefix and take the argmax."""
    captions = []
    for feature in features:
        sequence = [vocab.start_id]
        for _ in range(max_len):
            padded = np.zeros((1, max_len), dtype=np.int32)
            padded[0, : len(sequence)] = sequence
            logits = model.predict([feature[None], padded], verbose=0)["logits"]
            word = int(np.argmax(logits[0, len(sequence) - 1]))
            sequence.append(word)
            if word == vocab.end_id:
                break
        captions.append(sequence[1:])
    return captions


def rate(function, count: int) -> float:
    started = time.perf_counter()
    function()
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--seed-images", type=int, default=50)
    arguments = parser.parse_args()

    encoder, max_len = declared_params("evaluate")["encoder"], declared_params("evaluate")["evaluate"]["max_len"]
    vocab = Vocabulary.load(Layout.vocab)
    trained = Trained.load(Layout.models)  # timing needs only the decoder
    stepper, pooled = Stepper(trained.architecture), not trained.spec.reads_grid
    with FeatureFile(Layout.features_file(encoder), encoder) as store:
        images = sorted({image for image, _ in read_captions(Layout.split_captions("test"))} & set(store.row_of))
        images = images[: arguments.images]
        features = store.read(np.array([store.row_of[image] for image in images]), pooled)
    rows, ids = np.arange(len(images)), (vocab.start_id, vocab.end_id, max_len)
    print(f"{trained.spec.rnn} {trained.spec.arch}, {len(images)} test images, max_len {max_len}")

    decoding.greedy(stepper, features.__getitem__, rows[:8], *ids)  # trace the step functions first
    decoding.beam_search(stepper, features.__getitem__, rows[:8], *ids, beam_size=3)
    seed_loop(trained.decoder, features[:2], vocab, max_len)

    seeds = rate(
        lambda: seed_loop(trained.decoder, features[: arguments.seed_images], vocab, max_len), arguments.seed_images
    )
    greedy = rate(lambda: decoding.greedy(stepper, features.__getitem__, rows, *ids), len(rows))
    beam = rate(lambda: decoding.beam_search(stepper, features.__getitem__, rows, *ids, beam_size=3), len(rows))
    print(f"per-image, per-token predict loop (greedy): {seeds:.1f} captions/s")
    print(f"ours, batched greedy:                             {greedy:.1f} captions/s")
    print(f"ours, batched beam 3:                             {beam:.1f} captions/s")
    print(f"beam-3 ÷ per-token loop = {beam / seeds:.1f}x  (goal >= 10x); greedy ÷ it = {greedy / seeds:.1f}x")


if __name__ == "__main__":
    main()
