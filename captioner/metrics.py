"""Caption scores, computed the standard way on word lists without special tokens.

BLEU is corpus-level (n-gram counts pooled over the test set, not a mean of per-image scores),
with nltk; CIDEr-D, ROUGE-L and METEOR come from pycocoevalcap (coco-caption), fed the very same
tokens as BLEU. METEOR needs Java; without it the key is left out and the reason printed.
"""

from __future__ import annotations

import shutil

import numpy as np

BLEU_WEIGHTS = {f"bleu{n}": tuple([1.0 / n] * n) for n in range(1, 5)}

Words = list[str]


def corpus_bleu(references: list[list[Words]], hypotheses: list[Words]) -> dict[str, float]:
    """BLEU-1…4 over the whole corpus, with nltk."""
    from nltk.translate.bleu_score import corpus_bleu as nltk_corpus_bleu

    return {name: float(nltk_corpus_bleu(references, hypotheses, weights=w)) for name, w in BLEU_WEIGHTS.items()}


def _coco_format(references: list[list[Words]], hypotheses: list[Words]) -> tuple[dict, dict]:
    gts = {index: [" ".join(words) for words in refs] for index, refs in enumerate(references)}
    res = {index: [" ".join(words)] for index, words in enumerate(hypotheses)}
    return gts, res


def coco_scores(references: list[list[Words]], hypotheses: list[Words]) -> tuple[dict[str, float], list[str]]:
    """CIDEr-D, ROUGE-L and (with Java) METEOR from pycocoevalcap; and notes on what was left out."""
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts, res = _coco_format(references, hypotheses)
    scores = {"cider": float(Cider().compute_score(gts, res)[0]), "rouge_l": float(Rouge().compute_score(gts, res)[0])}
    notes = []
    if shutil.which("java") is None:
        notes.append("meteor left out: it needs Java (e.g. apt-get install default-jre-headless)")
    else:
        from pycocoevalcap.meteor.meteor import Meteor

        meteor = Meteor()  # a Java subprocess, ended when the object is collected
        scores["meteor"] = float(meteor.compute_score(gts, res)[0])
        del meteor
    return scores, notes


def coco_bleu(references: list[list[Words]], hypotheses: list[Words]) -> dict[str, float]:
    """pycocoevalcap's BLEU-1…4 on the same tokens: the cross-check for ``corpus_bleu``."""
    from pycocoevalcap.bleu.bleu import Bleu

    values, _ = Bleu(4).compute_score(*_coco_format(references, hypotheses), verbose=0)
    return {f"bleu{n}": float(value) for n, value in enumerate(values, start=1)}


def caption_vector(words: Words, embeddings: np.ndarray, ids: dict[str, int]) -> np.ndarray | None:
    """Mean word embedding of the caption's in-vocabulary words (None if it has none)."""
    rows = [ids[word] for word in words if word in ids]
    return embeddings[rows].mean(axis=0) if rows else None


def cosine_similarities(
    references: list[list[Words]], hypotheses: list[Words], embeddings: np.ndarray, ids: dict[str, int]
) -> np.ndarray:
    """Per image: mean cosine between the generated caption and each reference, as mean word vectors."""
    values = []
    for refs, words in zip(references, hypotheses, strict=True):
        generated = caption_vector(words, embeddings, ids)
        cosines = []
        for ref in refs:
            reference = caption_vector(ref, embeddings, ids)
            if generated is not None and reference is not None:
                norm = np.linalg.norm(generated) * np.linalg.norm(reference)
                cosines.append(float(generated @ reference / norm) if norm else 0.0)
        values.append(np.mean(cosines) if cosines else 0.0)
    return np.array(values)


def diversity(hypotheses: list[Words], training_captions: set[str]) -> dict[str, float]:
    """Distinct words generated, share of captions not found verbatim in training, mean length in words."""
    return {
        "vocab_used": len({word for words in hypotheses for word in words}),
        "novel_rate": float(np.mean([" ".join(words) not in training_captions for words in hypotheses])),
        "avg_len": float(np.mean([len(words) for words in hypotheses])),
    }


def caption_scores(
    references: list[list[Words]],
    hypotheses: list[Words],
    embeddings: np.ndarray,
    ids: dict[str, int],
    training_captions: set[str],
) -> tuple[dict[str, float], np.ndarray, list[str]]:
    """Every text metric of the evaluate stage; the per-image cosines (for the histogram); notes."""
    coco, notes = coco_scores(references, hypotheses)
    cosines = cosine_similarities(references, hypotheses, embeddings, ids)
    scores = {
        **corpus_bleu(references, hypotheses),
        **coco,
        "cosine_similarity": float(cosines.mean()),
        **diversity(hypotheses, training_captions),
    }
    return scores, cosines, notes
