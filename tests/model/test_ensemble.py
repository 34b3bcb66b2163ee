"""Ensembles (captioner.model.ensemble): members decode as one, their next-word log-probabilities averaged."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from captioner import CaptionerError
from captioner.model import checkpoint, decoding
from captioner.model.decoder import Stepper
from captioner.model.decoding import DecodeSettings
from captioner.model.ensemble import EnsembleStepper, stepper_of
from captioner.model.ensemble import members as ensemble_of
from captioner.stage import Params
from captioner.training.config import member_settings
from captioner.training.trainer import Trainer
from tests.conftest import teacher_forced_fit, toy_batches, toy_config, toy_decoder, toy_problem, toy_spec

ATTRS = {"encoder": "toy", "weights": "w", "weights_param": "imagenet", "input_size": 96}


def trained_member(tmp_path, name, arch, seed, features, captions, vocab):
    keras.utils.set_random_seed(seed)
    architecture = toy_decoder(vocab, features, arch)
    trainer = Trainer(architecture.model, architecture.head, toy_config(arch))
    data = toy_batches(features, captions, vocab, arch, shuffle_seed=seed)
    teacher_forced_fit(trainer, data, data, epochs=6, patience=6)
    checkpoint.save(tmp_path / name, architecture.model, ATTRS, vocab, toy_spec(arch))
    return checkpoint.Trained.load(tmp_path / name)


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("members")
    features, captions, vocab = toy_problem()
    main = trained_member(tmp_path, "main", "inject", 1, features, captions, vocab)
    others = [trained_member(tmp_path, "attend", "attention", 2, features, captions, vocab)]
    others.append(trained_member(tmp_path, "transform", "transformer", 3, features, captions, vocab))
    return ensemble_of(main, [tmp_path / "attend", tmp_path / "transform"]), features, vocab, others


def averaged_greedy(members, features, vocab, max_len):
    """The reference: each step, every member's log-softmax (pooled members reading the mean vector), averaged,
    argmax; finished rows hold <end>."""
    steppers = [Stepper(member.architecture) for member in members]
    inputs = [features if member.reads_grid else features.mean(axis=1) for member in members]
    states = [stepper.start(tf.constant(x), max_len) for stepper, x in zip(steppers, inputs, strict=True)]
    tokens = np.full(len(features), vocab.start_id, dtype=np.int32)
    out = np.full((len(features), max_len), vocab.end_id, dtype=np.int32)
    done = np.zeros(len(features), dtype=bool)
    for position in range(max_len):
        log_probs = []
        for index, stepper in enumerate(steppers):
            logits, states[index], _ = stepper.step(tf.constant(tokens), states[index])
            log_probs.append(tf.nn.log_softmax(logits).numpy())
        tokens = np.mean(log_probs, axis=0).argmax(axis=-1).astype(np.int32)
        out[:, position] = np.where(done, vocab.end_id, tokens)
        done |= tokens == vocab.end_id
    return out


def test_a_two_member_ensemble_decodes_and_beam_1_is_the_argmax_of_the_averaged_log_probabilities(members):
    members, features, vocab, _ = members
    ensemble = EnsembleStepper(members)
    assert ensemble.reads_grid and ensemble.pools == [True, False, True]  # inject and the (pooled) transformer
    # average the grid, attention reads it
    rows, read = np.arange(len(features)), features.__getitem__
    expected = averaged_greedy(members, features, vocab, 6)
    greedy = decoding.greedy(ensemble, read, rows, 6).ids
    beam_1 = decoding.beam_search(ensemble, read, rows, DecodeSettings(beam_size=1, max_len=6)).ids
    np.testing.assert_array_equal(greedy, expected)
    np.testing.assert_array_equal(beam_1, expected)
    beam_3 = decoding.beam_search(ensemble, read, rows, DecodeSettings(beam_size=3, max_len=6)).ids
    assert (beam_3[:, 0] != vocab.end_id).all()  # real captions, not empty ones
    # Not a copy of either member: the members disagree somewhere, so averaging matters.
    pooled = features.mean(axis=1).__getitem__
    alone = [decoding.greedy(Stepper(m.architecture), read if m.reads_grid else pooled, rows, 6).ids for m in members]
    assert not np.array_equal(alone[0], alone[1])


def test_one_member_decodes_through_its_own_stepper_and_several_through_the_ensemble(members):
    members, *_ = members
    alone, both = stepper_of(members[:1]), stepper_of(members)
    assert type(alone) is Stepper and not alone.reads_grid  # inject reads the pooled vector
    assert type(both) is EnsembleStepper and both.reads_grid  # attention makes the ensemble read the grid
    assert stepper_of(members[1:]).reads_grid


def test_each_member_traces_once_whatever_the_batch_sizes_so_tensorflow_warns_of_no_retracing(members):
    members, features, vocab, _ = members
    ensemble, rows = EnsembleStepper(members), np.arange(len(features))
    batch_size = len(features) // 2 + 1  # a full batch, then a smaller last one; beams make it ×3
    decoding.greedy(ensemble, features.__getitem__, rows, 6, batch_size)
    decoding.beam_search(ensemble, features.__getitem__, rows, DecodeSettings(beam_size=3, max_len=6), batch_size)
    for stepper in ensemble.steppers:
        assert (stepper.start.experimental_get_tracing_count(), stepper.step.experimental_get_tracing_count()) == (1, 1)


def test_members_must_share_the_vocabulary_and_have_no_fine_tuned_encoder(members, tmp_path):
    (main, *_), features, vocab, _ = members
    other_vocab = type(vocab)([*vocab.words, "extra"], vocab.max_length)
    keras.utils.set_random_seed(0)
    odd = toy_decoder(other_vocab, features, "inject").model
    checkpoint.save(tmp_path / "odd", odd, ATTRS, other_vocab, toy_spec("inject"))
    with pytest.raises(CaptionerError, match=r"ensemble member .*odd has another vocabulary than the main model"):
        ensemble_of(main, [tmp_path / "odd"])


def test_a_member_stage_reads_its_overrides_and_the_main_stage_none():
    decoder, train = Params({"arch": "inject", "units": 512}, "decoder."), Params({"seed": 1, "epochs": 15}, "train.")
    params = Params({"decoder": decoder, "train": train})
    assert member_settings(params) == (None, params["decoder"], params["train"])
    member = Params(params | {"ensemble": {"attend": {"decoder": {"arch": "attention"}, "train": {"seed": 3}}}})
    assert member_settings(member) == ("attend", {"arch": "attention", "units": 512}, {"seed": 3, "epochs": 15})
