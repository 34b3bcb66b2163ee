"""The evaluate stage's work (captioner.evaluation.evaluate): decoding as the evaluate params say, the scores, the
table."""

import dataclasses

import numpy as np
import pytest

from captioner.evaluation import evaluate as evaluation
from captioner.model import checkpoint, decoding
from captioner.model.decoder import Stepper
from captioner.model.decoding import DecodeSettings
from captioner.training.loss import EpochStats
from tests.conftest import toy_decoder, toy_problem, toy_spec

ATTRS = {"encoder": "toy", "weights": "w", "weights_param": "imagenet", "input_size": 96}
SETTINGS = DecodeSettings(beam_size=3, length_penalty=0.0, max_len=6)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    features, captions, vocab = toy_problem()
    directory = tmp_path_factory.mktemp("model")
    checkpoint.save(directory, toy_decoder(vocab, features, "inject").model, ATTRS, vocab, toy_spec("inject"))
    return checkpoint.Trained.load(directory), features.mean(axis=1), captions, vocab


@pytest.mark.parametrize("beam_size", [1, 3])
def test_decoding_takes_the_decode_batch_size_and_batches_change_no_caption(toy, monkeypatch, beam_size):
    trained, table, _, vocab = toy
    stepper, rows = Stepper(trained.architecture), np.arange(len(table))
    decoder_name = "greedy" if beam_size == 1 else "beam_search"
    calls, real = [], getattr(decoding, decoder_name)

    def recorded(*args, **kwargs):
        calls.append(args[4])
        return real(*args, **kwargs)

    monkeypatch.setattr(decoding, decoder_name, recorded)
    settings = dataclasses.replace(SETTINGS, beam_size=beam_size)
    small = decoding.decode(stepper, table.__getitem__, rows, settings, 5).ids
    whole = decoding.decode(stepper, table.__getitem__, rows, settings, 256).ids
    assert calls == [5, 256]
    np.testing.assert_array_equal(small, whole)
    assert small.shape == (len(table), SETTINGS.max_len)


def test_scores_record_the_decoding_settings_and_an_ensemble_only_when_there_is_one(toy):
    trained, _, captions, vocab = toy
    references = [[tokens[1:-1]] for _, tokens in captions[:4]]
    hypotheses = [tokens[1:-1] for _, tokens in captions[:4]]
    result = evaluation.Evaluation([f"{i}.jpg" for i in range(4)], references, hypotheses, EpochStats(0.5, 0.8), [])
    alone, cosines, _ = evaluation.scores(result, trained, vocab, captions, SETTINGS)
    assert alone["bleu1"] == 1.0 and alone["token_accuracy"] == 0.8 and alone["perplexity"] == round(np.exp(0.5), 4)
    assert (alone["beam_size"], alone["max_len"], alone["test_images"]) == (3, 6, 4)
    assert "ensemble_members" not in alone and alone["novel_rate"] == 0.0  # every caption is a train caption
    np.testing.assert_allclose(cosines, 1.0, rtol=1e-5)  # each caption is its own reference
    together, _, _ = evaluation.scores(result, trained, vocab, captions, SETTINGS, ensemble_size=3)
    assert together["ensemble_members"] == 3


def test_the_captions_table_puts_each_caption_beside_its_references():
    result = evaluation.Evaluation(
        ["a.jpg"], [[["a", "dog"], ["one", "dog"]]], [["a", "dog", "runs"]], EpochStats(1.0, 0.5), []
    )
    assert evaluation.captions_table(result) == "image\tgenerated\treferences\na.jpg\ta dog runs\ta dog | one dog\n"
