"""Caption scores: corpus-level BLEU on word lists without special tokens."""

from __future__ import annotations

BLEU_WEIGHTS = {f"bleu{n}": tuple([1.0 / n] * n) for n in range(1, 5)}


def corpus_bleu(references: list[list[list[str]]], hypotheses: list[list[str]]) -> dict[str, float]:
    """BLEU-1…4 over the whole corpus (not a mean of per-image scores), with nltk."""
    from nltk.translate.bleu_score import corpus_bleu as nltk_corpus_bleu

    return {
        name: float(nltk_corpus_bleu(references, hypotheses, weights=weights)) for name, weights in BLEU_WEIGHTS.items()
    }
