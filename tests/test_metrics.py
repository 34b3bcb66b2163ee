"""Corpus BLEU (captioner.metrics)."""

import pytest

from captioner import metrics


def test_perfect_hypotheses_score_one():
    references = [[["a", "red", "circle", "on", "grey"]], [["two", "blue", "squares", "side", "by", "side"]]]
    hypotheses = [refs[0] for refs in references]
    assert metrics.corpus_bleu(references, hypotheses) == {f"bleu{n}": pytest.approx(1.0) for n in range(1, 5)}


def test_corpus_bleu_pools_counts_rather_than_averaging_images():
    references = [[["a", "b", "c", "d"]], [["e", "f", "g", "h"]]]
    hypotheses = [["a", "b", "c", "d"], ["e", "x", "y", "z"]]
    scores = metrics.corpus_bleu(references, hypotheses)
    assert scores["bleu1"] == pytest.approx(5 / 8)  # pooled unigram precision, brevity penalty 1
    assert scores["bleu2"] == pytest.approx((5 / 8 * 3 / 6) ** 0.5)
    assert 0.0 < scores["bleu4"] < scores["bleu3"] < scores["bleu2"] < scores["bleu1"] < 1.0


def test_best_matching_reference_counts_and_short_hypotheses_are_penalised():
    references = [[["a", "cat", "sits", "on", "the", "mat"], ["the", "cat", "is", "on", "the", "mat"]]]
    full = metrics.corpus_bleu(references, [["the", "cat", "is", "on", "the", "mat"]])
    short = metrics.corpus_bleu(references, [["the", "cat", "is"]])
    assert full["bleu4"] == pytest.approx(1.0)
    assert short["bleu1"] < 1.0  # precision 1, brevity penalty exp(1 - 6/3)
    assert short["bleu1"] == pytest.approx(2.718281828 ** (1 - 2))
