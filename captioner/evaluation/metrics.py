"""Caption scores, computed the standard way on word lists without special tokens.

BLEU is corpus-level (n-gram counts pooled over the test set, not a mean of per-image scores),
with nltk; CIDEr-D, ROUGE-L and METEOR come from pycocoevalcap (coco-caption), fed the very same
tokens as BLEU. METEOR needs Java; without it the key is left out and the reason printed.
"""

from __future__ import annotations

import atexit
import math
import shutil
import threading
from collections import Counter

import numpy as np

BLEU_WEIGHTS = {f"bleu{n}": tuple([1.0 / n] * n) for n in range(1, 5)}

Words = list[str]


def corpus_bleu(references: list[list[Words]], hypotheses: list[Words]) -> dict[str, float]:
    """BLEU-1…4 over the whole corpus, with nltk."""
    from nltk.translate.bleu_score import corpus_bleu as nltk_corpus_bleu

    return {name: float(nltk_corpus_bleu(references, hypotheses, weights=w)) for name, w in BLEU_WEIGHTS.items()}


def _bleu_statistics(references: list[list[Words]], hypotheses: list[Words]) -> np.ndarray:
    """Per image (N × 10): clipped matches and n-grams for n = 1…4, hypothesis and closest reference length. Corpus
    BLEU is a function of their column sums, so redrawing images is redrawing rows."""
    from nltk.translate.bleu_score import closest_ref_length, modified_precision

    rows = []
    for refs, hypothesis in zip(references, hypotheses, strict=True):
        precisions = [modified_precision(refs, hypothesis, n) for n in range(1, 5)]
        counts = [value for p in precisions for value in (p.numerator, p.denominator)]
        rows.append([*counts, len(hypothesis), closest_ref_length(refs, len(hypothesis))])
    return np.array(rows, dtype=np.float64).reshape(-1, 10)


def _bleu4_of(sums: np.ndarray) -> float:
    """Corpus BLEU-4 from summed ``_bleu_statistics``, as nltk's ``corpus_bleu`` computes it (no smoothing)."""
    from nltk.translate.bleu_score import brevity_penalty

    matches, totals = sums[0:8:2], sums[1:8:2]
    if (matches == 0).any():
        return 0.0
    return brevity_penalty(int(sums[9]), int(sums[8])) * math.exp(float(np.mean(np.log(matches / totals))))


def bleu4_bootstrap(
    references: list[list[Words]], systems: list[list[Words]], draws: int = 1000, seed: int = 0
) -> np.ndarray:
    """Corpus BLEU-4 (draws × systems) of each system's captions on ``draws`` redraws of the images with
    replacement (a bootstrap): every system is scored on the same redraw, so differences of columns are paired."""
    statistics = [_bleu_statistics(references, hypotheses) for hypotheses in systems]
    rng = np.random.default_rng(seed)
    scores = np.empty((draws, len(systems)))
    for draw in range(draws):
        chosen = rng.integers(0, len(references), len(references))
        scores[draw] = [_bleu4_of(table[chosen].sum(axis=0)) for table in statistics]
    return scores


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
    meteor = _meteor()
    if meteor is None:
        notes.append("meteor left out: it needs Java (e.g. apt-get install default-jre-headless)")
    else:
        scores["meteor"] = float(meteor.compute_score(gts, res)[0])
    return scores, notes


_METEOR: dict = {}  # this process's METEOR scorer and the thread loading it


def start_meteor() -> None:
    """Start pycocoevalcap's METEOR now, in the background, if Java is here: a Java process that loads a paraphrase
    table (~9 s) on its first request, so it loads while the caller decodes. One per Python process, reused by every
    ``coco_scores``; its answers do not depend on earlier requests."""
    if shutil.which("java") is None or "scorer" in _METEOR:
        return
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    atexit.register(scorer.__del__)  # the Java process ends with this one
    loading = threading.Thread(target=_load_tables, args=(scorer,), daemon=True)
    loading.start()
    _METEOR.update(scorer=scorer, loading=loading)


def _load_tables(scorer) -> None:
    with scorer.lock:
        scorer._stat("a", ["a"])  # a first SCORE request makes it load its tables


def _meteor():
    """The process's METEOR scorer, loaded; None without Java."""
    if shutil.which("java") is None:
        return None
    start_meteor()
    _METEOR["loading"].join()
    return _METEOR["scorer"]


def coco_bleu(references: list[list[Words]], hypotheses: list[Words]) -> dict[str, float]:
    """pycocoevalcap's BLEU-1…4 on the same tokens: the cross-check for ``corpus_bleu``."""
    from pycocoevalcap.bleu.bleu import Bleu

    values, _ = Bleu(4).compute_score(*_coco_format(references, hypotheses), verbose=0)
    return {f"bleu{n}": float(value) for n, value in enumerate(values, start=1)}


def _ngram_counts(words: Words, n: int) -> Counter:
    return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


class CiderD:
    """CIDEr-D of single captions of known images, with n-gram document frequencies from a fixed corpus.

    pycocoevalcap's ``Cider`` takes the frequencies from the references it is handed, so it cannot
    score one training batch against the statistics of all train images, as self-critical training
    needs (Rennie et al. 2017 use the train corpus). This is the same formula, with the references'
    tf-idf vectors computed once: n-grams up to 4, clipped tf-idf cosine, a Gaussian length penalty
    (sigma 6), mean over n and references, × 10. Fed the references of the images it scores, it
    equals pycocoevalcap's per-image scores (tested).
    """

    def __init__(self, references: list[list[Words]], n: int = 4, sigma: float = 6.0):
        self.n, self.sigma = n, sigma
        counted = [[_ngram_counts(ref, n) for ref in refs] for refs in references]
        frequency = Counter(ngram for refs in counted for ngram in {g for ref in refs for g in ref})
        self.log_documents = math.log(len(references))
        self.log_frequency = {ngram: math.log(count) for ngram, count in frequency.items()}
        self.references = [[self._vector(counts) for counts in refs] for refs in counted]

    def _vector(self, counts: Counter) -> tuple[list[dict], list[float], int]:
        vector, norm = [{} for _ in range(self.n)], [0.0] * self.n
        for ngram, count in counts.items():
            weight = count * (self.log_documents - self.log_frequency.get(ngram, 0.0))
            vector[len(ngram) - 1][ngram] = weight
            norm[len(ngram) - 1] += weight * weight
        # pycocoevalcap's "length" counts bigrams; kept, so the length penalty is the same.
        bigrams = sum(count for ngram, count in counts.items() if len(ngram) == 2)
        return vector, [math.sqrt(value) for value in norm], bigrams

    def score(self, image: int, words: Words) -> float:
        """CIDEr-D of ``words`` against the references of ``image`` (its index in the constructor's list)."""
        vector, norm, length = self._vector(_ngram_counts(words, self.n))
        total = 0.0
        for ref_vector, ref_norm, ref_length in self.references[image]:
            penalty = math.exp(-((length - ref_length) ** 2) / (2 * self.sigma**2))
            for k in range(self.n):
                if norm[k] and ref_norm[k]:
                    ref = ref_vector[k]
                    clipped = sum(min(weight, ref.get(g, 0.0)) * ref.get(g, 0.0) for g, weight in vector[k].items())
                    total += clipped / (norm[k] * ref_norm[k]) * penalty
        return 10.0 * total / self.n / len(self.references[image])


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
