"""How much of a test BLEU-4 is the choice of test images: a bootstrap over the images the last evaluate scored.

    dvc repro
    python bench/bleu_spread.py [--draws 1000]

Reads metrics/test_captions.tsv, redraws as many images with replacement ``--draws`` times
(``captioner.evaluation.metrics.bleu4_bootstrap``, which `caption-diff` uses too) and prints BLEU-4, the draws'
standard deviation and their 2.5–97.5 % interval.
"""

from __future__ import annotations

import argparse

import numpy as np

from captioner.evaluation import metrics
from captioner.report import TEST_CAPTIONS, read_test_captions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, default=1000, help="bootstrap draws (default: 1000)")
    arguments = parser.parse_args()
    references, hypotheses = zip(*read_test_captions(TEST_CAPTIONS.read_text()).values(), strict=True)
    draws = metrics.bleu4_bootstrap(list(references), [list(hypotheses)], arguments.draws)[:, 0]
    low, high = np.percentile(draws, [2.5, 97.5])
    bleu4 = metrics.corpus_bleu(list(references), list(hypotheses))["bleu4"]
    print(f"{len(hypotheses)} test images: BLEU-4 {bleu4:.4f}; over {arguments.draws} bootstrap draws of the images: "
          f"sd {np.std(draws):.4f}, 95 % interval {low:.4f}–{high:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
