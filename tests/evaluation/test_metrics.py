"""Caption scores (captioner.evaluation.metrics)."""

import shutil

import numpy as np
import pytest

from captioner.evaluation import metrics


def random_corpus(seed: int, images: int = 60):
    """Captions over a small vocabulary, so every n-gram order has matches and misses."""
    rng = np.random.default_rng(seed)
    words = "a dog man woman runs sits on the grass beach red ball with".split()

    def caption():
        return [words[i] for i in rng.integers(0, len(words), rng.integers(5, 12))]

    references = [[caption() for _ in range(5)] for _ in range(images)]
    hypotheses = [refs[0][: rng.integers(3, len(refs[0]) + 1)] + caption()[:2] for refs in references]
    return references, hypotheses


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


def test_short_hypotheses_get_the_brevity_penalty():
    references = [[["a", "cat", "sits", "on", "the", "mat"], ["the", "cat", "is", "on", "the", "mat"]]]
    assert metrics.corpus_bleu(references, [["the", "cat", "is", "on", "the", "mat"]])["bleu4"] == pytest.approx(1.0)
    assert metrics.corpus_bleu(references, [["the", "cat", "is"]])["bleu1"] == pytest.approx(np.exp(1 - 2))


@pytest.mark.parametrize("seed", range(3))
def test_nltk_bleu_agrees_with_coco_caption_bleu(seed):
    references, hypotheses = random_corpus(seed)
    ours, coco = metrics.corpus_bleu(references, hypotheses), metrics.coco_bleu(references, hypotheses)
    assert all(0.01 < value < 0.99 for value in ours.values())
    for key in ours:
        assert ours[key] == pytest.approx(coco[key], abs=1e-6)


def test_each_bootstrap_draw_is_the_corpus_bleu4_of_the_redrawn_images_the_same_for_every_system():
    references, hypotheses = random_corpus(4, images=30)
    shorter = [words[:-2] for words in hypotheses]
    draws = metrics.bleu4_bootstrap(references, [hypotheses, shorter, hypotheses], draws=6, seed=5)
    rng = np.random.default_rng(5)  # the redraws bleu4_bootstrap makes
    for row in draws:
        chosen = rng.integers(0, len(references), len(references))
        for column, system in enumerate((hypotheses, shorter)):
            redrawn = metrics.corpus_bleu([references[i] for i in chosen], [system[i] for i in chosen])
            assert row[column] == pytest.approx(redrawn["bleu4"], abs=1e-12)
    np.testing.assert_array_equal(draws[:, 0], draws[:, 2])  # paired: one redraw for all systems
    assert len(set(draws[:, 0])) == 6 and (draws[:, 1] != draws[:, 0]).all()


def test_a_bootstrap_draw_without_a_four_gram_match_scores_zero_as_nltk_does():
    references = [[["a", "b", "c", "d", "e"]], [["x", "y"]]]  # the second image has no 4-gram at all
    hypotheses = [["a", "b", "c", "d", "e"], ["x", "y"]]
    draws = metrics.bleu4_bootstrap(references, [hypotheses], draws=20, seed=0)[:, 0]
    rng = np.random.default_rng(0)
    expected = []
    for _ in draws:
        chosen = rng.integers(0, 2, 2)
        expected.append(metrics.corpus_bleu([references[i] for i in chosen], [hypotheses[i] for i in chosen])["bleu4"])
    np.testing.assert_allclose(draws, expected, atol=1e-12)
    assert {0.0, 1.0} < set(np.round(draws, 12))  # the second image twice, the first twice, and mixed


@pytest.mark.parametrize("seed", range(2))
def test_cider_d_with_the_scored_images_references_equals_pycocoevalcap_per_image(seed):
    from pycocoevalcap.cider.cider import Cider

    references, hypotheses = random_corpus(seed)
    hypotheses[0] = []  # an empty caption scores 0 in both
    _, coco = Cider().compute_score(*metrics._coco_format(references, hypotheses))
    cider = metrics.CiderD(references)
    ours = [cider.score(image, words) for image, words in enumerate(hypotheses)]
    assert np.std(coco) > 0.05
    np.testing.assert_allclose(ours, coco, rtol=1e-9, atol=1e-12)


def test_cider_d_document_frequencies_come_from_the_given_corpus_not_the_scored_captions():
    references, _ = random_corpus(0)
    whole, first = metrics.CiderD(references), metrics.CiderD(references[:5])
    caption = references[2][0]
    assert whole.score(2, caption) != pytest.approx(first.score(2, caption))
    assert whole.score(2, caption) > whole.score(3, caption)  # its own image's references reward it most


def test_coco_scores_rank_a_better_corpus_higher():
    references, hypotheses = random_corpus(0)
    perfect, _ = metrics.coco_scores(references, [refs[0] for refs in references])
    noisy, notes = metrics.coco_scores(references, hypotheses)
    assert perfect["cider"] > noisy["cider"] > 0 and perfect["rouge_l"] > noisy["rouge_l"] > 0
    if shutil.which("java"):
        assert perfect["meteor"] > noisy["meteor"] > 0 and notes == []
    else:
        assert "meteor" not in noisy and "Java" in notes[0]


def test_meteor_is_left_out_with_a_reason_without_java(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    references, hypotheses = random_corpus(1, images=5)
    scores, notes = metrics.coco_scores(references, hypotheses)
    assert "meteor" not in scores and notes == [
        "meteor left out: it needs Java (e.g. apt-get install default-jre-headless)"
    ]


def test_cosine_similarity_of_mean_word_vectors():
    embeddings = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    ids = {"east": 1, "north": 2, "northeast": 3}
    values = metrics.cosine_similarities([[["east"], ["north"]], [["east"]]], [["east"], ["unknown"]], embeddings, ids)
    np.testing.assert_allclose(values, [0.5, 0.0])  # (1 + 0) / 2; a caption with no known word scores 0


def test_diversity():
    hypotheses = [["a", "dog"], ["a", "cat", "runs"], ["a", "dog"]]
    assert metrics.diversity(hypotheses, {"a dog"}) == {
        "vocab_used": 4,
        "novel_rate": pytest.approx(1 / 3),
        "avg_len": pytest.approx(7 / 3),
    }


def test_meteor_starts_once_per_process_and_answers_the_same_whatever_it_scored_before():
    if not shutil.which("java"):
        return  # nothing starts without Java (the test above)
    metrics.start_meteor()
    scorer = metrics._METEOR["scorer"]
    references, hypotheses = random_corpus(2, images=6)
    first, _ = metrics.coco_scores(references, hypotheses)
    metrics.coco_scores(references, [refs[0] for refs in references])
    metrics.start_meteor()
    again, _ = metrics.coco_scores(references, hypotheses)
    assert metrics._METEOR["scorer"] is scorer and again["meteor"] == first["meteor"]
