"""The compiled decoding loops (captioner.model.decoding) against the plain Python-loop reference in
tests/reference_decoding.py."""

from types import SimpleNamespace

import keras
import numpy as np
import pytest

from captioner.evaluation import metrics
from captioner.model import decoder, decoding
from captioner.model.decoder import Stepper
from captioner.model.decoding import DecodeSettings, SpecialIds
from captioner.model.spec import DecoderSpec
from captioner.training.trainer import Trainer
from tests import reference_decoding as reference
from tests.conftest import teacher_forced_fit, toy_batches, toy_config, toy_decoder, toy_problem


def trained(vocab, features, captions, arch, epochs, rnn="gru") -> decoder.Architecture:
    data = toy_batches(features, captions, vocab, arch)
    architecture = toy_decoder(vocab, features, arch, rnn)
    trainer = Trainer(architecture.model, architecture.head, toy_config(arch))
    teacher_forced_fit(trainer, data, data, epochs=epochs, patience=epochs)
    return architecture


@pytest.mark.parametrize("arch", decoder.ARCHS)
def test_greedy_captions_a_trained_model_and_agrees_with_teacher_forcing(arch):
    keras.utils.set_random_seed(1)
    features, captions, vocab = toy_problem()
    architecture = trained(vocab, features, captions, arch, epochs=50, rnn="lstm")
    model = architecture.model

    table = features if arch == "attention" else features.mean(axis=1)
    rows = np.arange(16)
    generated = decoding.greedy(Stepper(architecture), table.__getitem__, rows, 8, batch_size=5).ids
    assert generated.shape == (16, 8)
    decoded = [vocab.decode(ids) for ids in generated]
    assert sum(words == tokens[1:-1] for words, (_, tokens) in zip(decoded, captions, strict=True)) >= 13
    for ids in generated:  # once <end> is produced, the row stays <end>
        ends = np.flatnonzero(ids == vocab.end_id)
        assert len(ends) and (ids[ends[0] :] == vocab.end_id).all()

    # Step-by-step decoding must agree with the training graph fed its own greedy output.
    prefix = np.concatenate([np.full((16, 1), vocab.start_id), generated[:, :3]], axis=1).astype(np.int32)
    teacher = np.argmax(model([table, prefix], training=False)["logits"], axis=-1)
    np.testing.assert_array_equal(teacher[:, :4], generated[:, :4])


def test_a_model_that_never_ends_yields_max_len_tokens():
    architecture = decoder.architecture(DecoderSpec("gru", "inject", units=8, embedding_dim=4, dropout=0.0), 6)
    architecture.build((4,))
    kernel, _ = architecture.head.get_weights()
    architecture.head.set_weights([np.zeros_like(kernel), np.eye(6)[5] * 10.0])  # always the word with id 5
    table = np.ones((3, 4), np.float32)
    stepper = Stepper(architecture)
    generated = decoding.greedy(stepper, table.__getitem__, np.arange(3), max_len=7).ids
    assert generated.shape == (3, 7) and (generated == 5).all()


@pytest.fixture(scope="module")
def trained_inject():
    keras.utils.set_random_seed(2)
    features, captions, vocab = toy_problem()
    return Stepper(trained(vocab, features, captions, "inject", epochs=8)), features.mean(axis=1), vocab


def test_dev_scores_are_the_corpus_bleu4_and_the_coco_cider_d_of_the_greedy_captions(trained_inject):
    from captioner.training.train import dev_scorer

    stepper, table, vocab = trained_inject
    _, captions, _ = toy_problem()
    # Two references per image: its own caption and another image's, so neither score is trivially 0 or perfect.
    dev = [(str(i), tokens) for i, (_, tokens) in enumerate(captions)]
    dev += [(str(i), captions[(i + 5) % 16][1]) for i in range(16)]
    references = [[tokens[1:-1], captions[(i + 5) % 16][1][1:-1]] for i, (_, tokens) in enumerate(captions)]
    run = SimpleNamespace(read=table.__getitem__, dev_features=SimpleNamespace(row_of={str(i): i for i in range(16)}))
    greedy = decoding.greedy(stepper, table.__getitem__, np.arange(16), vocab.max_length).ids
    hypotheses = [vocab.decode(ids) for ids in greedy]
    scores = dev_scorer(stepper, run, dev, vocab)()
    bleu4, cider = scores["bleu4"], scores["cider"]
    assert bleu4 == metrics.corpus_bleu(references, hypotheses)["bleu4"]
    assert cider == pytest.approx(metrics.coco_scores(references, hypotheses)[0]["cider"], abs=1e-9)
    assert 0 < cider != bleu4


def test_beam_of_one_is_greedy(trained_inject):
    stepper, table, vocab = trained_inject
    rows = np.arange(16)
    greedy = decoding.greedy(stepper, table.__getitem__, rows, 8).ids
    beam = decoding.beam_search(stepper, table.__getitem__, rows, DecodeSettings(beam_size=1, max_len=8)).ids
    np.testing.assert_array_equal(beam, greedy)


def test_wider_beams_find_sequences_at_least_as_likely_as_greedy(trained_inject):
    """Beam search is a heuristic (on an untrained model a pruned greedy path can beat it), but on a
    trained model it must never return a less likely caption than greedy, and its scores must be true."""
    stepper, table, vocab = trained_inject
    rows = np.arange(16)
    greedy = decoding.greedy(stepper, table.__getitem__, rows, 8).ids
    greedy_score = reference.sequence_log_prob(stepper, table.__getitem__, rows, greedy, vocab.start_id, vocab.end_id)
    for width in (2, 3, 5):
        settings = DecodeSettings(beam_size=width, max_len=8)
        beam, beam_score, _ = decoding.beam_search(stepper, table.__getitem__, rows, settings, batch_size=6)
        rescored = reference.sequence_log_prob(stepper, table.__getitem__, rows, beam, vocab.start_id, vocab.end_id)
        np.testing.assert_allclose(beam_score, rescored, rtol=1e-4, atol=1e-4)
        assert (beam_score >= greedy_score - 1e-4).all()


def test_beam_search_on_a_model_that_never_ends_takes_the_best_unfinished_beam():
    architecture = decoder.architecture(DecoderSpec("gru", "inject", units=8, embedding_dim=4, dropout=0.0), 6)
    architecture.build((4,))
    kernel, _ = architecture.head.get_weights()
    architecture.head.set_weights([np.zeros_like(kernel), np.array([0, 0, -5.0, 0, 3.0, 4.0])])  # <end> never wins
    table = np.ones((3, 4), np.float32)
    settings = DecodeSettings(beam_size=3, max_len=7)
    beam, scores, _ = decoding.beam_search(Stepper(architecture), table.__getitem__, np.arange(3), settings)
    assert beam.shape == (3, 7) and (beam == 5).all() and np.isfinite(scores).all()


@pytest.fixture(scope="module")
def trained_decoders():
    """A briefly trained decoder of each architecture (half-learnt: close calls between words and beams), and an
    ensemble of an inject and an attention member."""
    from captioner.model.ensemble import EnsembleStepper

    features, captions, vocab = toy_problem()
    architectures = {}
    for seed, arch in enumerate(decoder.ARCHS):
        keras.utils.set_random_seed(seed)
        architectures[arch] = trained(vocab, features, captions, arch, epochs=4)
    decoders = {arch: Stepper(architecture) for arch, architecture in architectures.items()}
    members = [
        SimpleNamespace(architecture=architectures[arch], reads_grid=arch == "attention")
        for arch in ("inject", "attention")
    ]
    decoders["ensemble"] = EnsembleStepper(members)
    return decoders, features, vocab


def table_for(stepper, features):
    return features if stepper.reads_grid else features.mean(axis=1)


@pytest.mark.parametrize("name", [*decoder.ARCHS, "ensemble"])
def test_compiled_greedy_and_beam_search_pick_the_reference_implementations_captions(trained_decoders, name):
    decoders, features, vocab = trained_decoders
    stepper = decoders[name]
    table = table_for(stepper, features)
    rows, ends = np.arange(len(table)), (vocab.start_id, vocab.end_id)
    # Greedy is the argmax path, token for token.
    expected = reference.greedy(stepper, table.__getitem__, rows, *ends, 7)
    np.testing.assert_array_equal(decoding.greedy(stepper, table.__getitem__, rows, 7, batch_size=5).ids, expected)
    for width, penalty in ((2, 0.0), (3, 0.0), (4, 1.0)):
        settings = DecodeSettings(beam_size=width, length_penalty=penalty, max_len=7)
        ids, scores, _ = decoding.beam_search(stepper, table.__getitem__, rows, settings, batch_size=5)
        expected_ids, expected_scores = reference.beam_search(
            stepper, table.__getitem__, rows, *ends, 7, width, penalty
        )
        np.testing.assert_array_equal(ids, expected_ids)
        np.testing.assert_allclose(scores, expected_scores, rtol=1e-6)


def test_beam_search_breaks_ties_as_a_stable_sort_does():
    """Every word but <end> equally likely: every candidate ties, and both implementations keep the lowest ids."""
    architecture = decoder.architecture(DecoderSpec("gru", "inject", units=8, embedding_dim=4, dropout=0.0), 6)
    architecture.build((4,))
    kernel, _ = architecture.head.get_weights()
    architecture.head.set_weights([np.zeros_like(kernel), np.array([0, 0, -5.0, 0, 0, 0])])
    stepper, table = Stepper(architecture), np.ones((2, 4), np.float32)
    ids = decoding.beam_search(stepper, table.__getitem__, np.arange(2), DecodeSettings(beam_size=3, max_len=5)).ids
    expected, _ = reference.beam_search(stepper, table.__getitem__, np.arange(2), 1, 2, max_len=5, beam_size=3)
    np.testing.assert_array_equal(ids, expected)
    assert (ids == 0).all()  # the lowest id wins every tie, step after step


def test_the_loops_trace_once_whatever_the_batch_size_length_and_width(trained_decoders):
    decoders, features, vocab = trained_decoders
    stepper = decoders["attention"]
    loops = decoding.loops(stepper)
    for count, max_len, width in ((3, 5, 2), (7, 9, 4)):
        loops.greedy(features[:count], max_len)
        loops.beam_search(features[:count], max_len, width, 0.5)
    assert loops.greedy.experimental_get_tracing_count() == loops.beam_search.experimental_get_tracing_count() == 1
    assert decoding.loops(stepper) is loops


def test_the_loops_transpose_no_integers(trained_decoders):
    """On some AVX-512 CPUs oneDNN logs an ERROR line for an integer Transpose: the console stays quiet without one."""
    import tensorflow as tf

    decoders, features, _ = trained_decoders
    loops = decoding.loops(decoders["attention"])
    traced = [
        loops.greedy.get_concrete_function(),
        loops.sample.get_concrete_function(),
        loops.beam_search.get_concrete_function(),
    ]
    library = [function for concrete in traced for function in concrete.graph.as_graph_def().library.function]
    nodes = [node for concrete in traced for node in concrete.graph.as_graph_def().node]
    nodes += [node for function in library for node in function.node_def]
    transposes = [node for node in nodes if node.op == "Transpose"]
    assert transposes  # the attention weights are transposed: the walk reaches the loops' bodies
    assert all(tf.as_dtype(node.attr["T"].type).is_floating for node in transposes)


def test_the_loops_are_cached_by_everything_that_shapes_them(trained_decoders):
    """The special ids are constants of the traced loop: other ids are other loops, never the cached ones."""
    decoders, features, vocab = trained_decoders
    stepper, table = decoders["inject"], features.mean(axis=1)
    usual = decoding.loops(stepper)
    assert usual.ids == (vocab.pad_id, vocab.start_id, vocab.end_id)
    caption = usual.greedy(table[:1], 7)["ids"].numpy()[0]
    first_word = int(caption[0])
    assert first_word != vocab.end_id and not (caption == first_word).all()
    # A loop whose end is the caption's first word ends it there, the rest of the row that "end".
    other = decoding.loops(stepper, SpecialIds(pad=vocab.pad_id, start=vocab.start_id, end=first_word))
    assert other is not usual and decoding.loops(stepper) is usual
    assert (other.greedy(table[:1], 7)["ids"].numpy()[0] == first_word).all()


@pytest.mark.parametrize("name", ["inject", "attention"])
def test_the_loops_inside_a_function_with_a_static_batch_of_one_decode_as_with_any_batch(trained_decoders, name):
    """The exported TensorFlow Lite signature's case: TensorFlow's graph optimiser, seeing one image, once took the
    shrinking batch of unfinished images for a constant one, and failed once every beam had ended."""
    import tensorflow as tf

    decoders, features, vocab = trained_decoders
    stepper = decoders[name]
    loops, table = decoding.loops(stepper), table_for(stepper, features)
    one = tf.TensorSpec([1, *stepper.features.shape[1:]], tf.float32)
    beam = tf.function(lambda image: loops.beam_search(image, 12, 3, 0.0), input_signature=[one])
    greedy = tf.function(lambda image: loops.greedy(image, 12), input_signature=[one])
    for image in table[:3]:
        expected = loops.beam_search(image[None], 12, 3, 0.0)
        assert (expected["ids"].numpy() == vocab.end_id).any()  # it ends before max_len: the batch empties
        np.testing.assert_array_equal(beam(image[None])["ids"], expected["ids"])
        np.testing.assert_array_equal(greedy(image[None])["ids"], loops.greedy(image[None], 12)["ids"])


def test_greedy_returns_an_attention_decoders_weights_for_each_generated_word(trained_decoders):
    decoders, features, vocab = trained_decoders
    ids, _, weights = decoding.greedy(decoders["attention"], features.__getitem__, np.arange(6), 7, attention=True)
    assert weights.shape == (6, 7, features.shape[1])
    assert decoding.greedy(decoders["attention"], features.__getitem__, np.arange(6), 7).attention is None
    for row, alphas in zip(ids, weights, strict=True):
        steps = min(int(np.argmax(row == 2)) + 1 if (row == 2).any() else 7, 7)
        np.testing.assert_allclose(alphas[:steps].sum(axis=-1), 1.0, rtol=1e-5)  # a distribution per word
