"""How much of a test BLEU-4 is the choice of test images: a bootstrap over the images the last evaluate scored.

    dvc repro
    python bench/bleu_spread.py [--draws 1000]

Reads metrics/test_captions.tsv (each test image's generated caption and references), redraws as many
images with replacement ``--draws`` times and scores each draw's corpus BLEU-4 as evaluate does; prints
BLEU-4, the draws' standard deviation and their 2.5–97.5 % interval. Differences between two runs smaller
than that interval are within what other test images of the same kind would move.
"""

from __future__ import annotations

import argparse
import csv

import numpy as np

from captioner import metrics
from captioner.stage import Layout


def bleu_statistics(references: list[list[list[str]]], hypotheses: list[list[str]]) -> np.ndarray:
    """Per image: clipped n-gram matches and n-gram counts for n = 1…4, hypothesis and closest reference length
    (N × 10). Corpus BLEU-4 is a function of their column sums, so a draw of images is a draw of rows."""
    from nltk.translate.bleu_score import closest_ref_length, modified_precision

    rows = []
    for refs, hypothesis in zip(references, hypotheses, strict=True):
        precisions = [modified_precision(refs, hypothesis, n) for n in range(1, 5)]
        counts = [value for p in precisions for value in (p.numerator, p.denominator)]
        rows.append([*counts, len(hypothesis), closest_ref_length(refs, len(hypothesis))])
    return np.array(rows, dtype=np.float64)


def bleu4(sums: np.ndarray) -> float:
    """Corpus BLEU-4 from summed ``bleu_statistics`` (as nltk's ``corpus_bleu``, no smoothing)."""
    from nltk.translate.bleu_score import brevity_penalty

    matches, totals = sums[0:8:2], sums[1:8:2]
    if (matches == 0).any():
        return 0.0
    return brevity_penalty(int(sums[9]), int(sums[8])) * float(np.exp(np.mean(np.log(matches / totals))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, default=1000, help="bootstrap draws (default: 1000)")
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    with open(Layout.test_captions, newline="") as table:
        rows = list(csv.DictReader(table, delimiter="\t", quoting=csv.QUOTE_NONE))
    hypotheses = [row["generated"].split() for row in rows]
    references = [[reference.split() for reference in row["references"].split(" | ")] for row in rows]
    statistics = bleu_statistics(references, hypotheses)
    whole = bleu4(statistics.sum(axis=0))
    assert abs(whole - metrics.corpus_bleu(references, hypotheses)["bleu4"]) < 1e-9  # evaluate's BLEU-4
    rng = np.random.default_rng(arguments.seed)
    draws = [bleu4(statistics[rng.integers(0, len(rows), len(rows))].sum(axis=0)) for _ in range(arguments.draws)]
    low, high = np.percentile(draws, [2.5, 97.5])
    print(f"{len(rows)} test images: BLEU-4 {whole:.4f}; over {arguments.draws} bootstrap draws of the images: "
          f"sd {np.std(draws):.4f}, 95 % interval {low:.4f}–{high:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
