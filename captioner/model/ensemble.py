"""Ensembles: several trained decoders decoding as one, their next-word log-probabilities averaged at every step.

An ensemble's *members* are all the models it averages, the main one (``models/``) first. The ``ensemble``
params name the others, each trained by its own ``train_member@<name>`` stage into ``ensemble/<name>/`` (a
model directory with its card; its params: ``captioner.training.config.member_settings``). Members share the vocabulary
and the cached features; each may have its own decoder and seed. ``stepper_of`` makes any list of members,
one or several, a ``Steppable``: decoding never asks which it has.
"""

from __future__ import annotations

from pathlib import Path

from captioner import CaptionerError
from captioner.model.checkpoint import Trained
from captioner.model.decoder import Steppable, Stepper


def members(main: Trained, directories: list[Path]) -> list[Trained]:
    """The ensemble of ``main`` and the models in ``directories``, in that order, checked to decode together: the
    same vocabulary and features, and no fine-tuned encoder (each would need features of its own)."""
    every = [main]
    for directory in directories:
        member = Trained.load(directory)
        for key in ("vocabulary", "encoder", "weights", "input_size"):
            if member.card.get(key) != main.card.get(key):
                raise CaptionerError(
                    f"ensemble member {directory} has another {key} than the main model; "
                    "members share the vocabulary and features (retrain it: dvc repro)"
                )
        every.append(member)
    if len(every) > 1 and any(member.encoder is not None for member in every):
        raise CaptionerError("an ensemble decodes cached features: its members cannot have fine-tuned encoders")
    return every


def stepper_of(members: list[Trained]) -> Steppable:
    """What decodes ``members`` as one: a lone model's own ``Stepper``, or their ``EnsembleStepper``."""
    if len(members) == 1:
        return Stepper(members[0].architecture)
    return EnsembleStepper(members)


class EnsembleStepper:
    """A ``Steppable`` of several members: ``step`` returns the mean of their next-word log-probabilities (as
    logits: decoding's argmax and log-softmax read them like one model's). ``start`` takes the grid when any
    member reads it (the others average it to the pooled vector, as the features file does)."""

    def __init__(self, members: list[Trained]):
        self.steppers = [Stepper(member.architecture) for member in members]
        self.reads_grid = any(member.reads_grid for member in members)
        self.pools = [self.reads_grid and not member.reads_grid for member in members]
        self.sizes: list[int] = []
        self.features = next(
            (stepper.features for stepper in self.steppers if stepper.reads_grid), self.steppers[0].features
        )
        self.attends = False  # weights over the grid are one model's: an average of several would show none
        contexts = [stepper.context for stepper in self.steppers if stepper.context is not None]
        self.context = min(contexts, default=None)

    def start(self, features, length) -> list:
        from keras import ops

        states, self.sizes = [], []
        for stepper, pool in zip(self.steppers, self.pools, strict=True):
            member = stepper.start(ops.mean(features, axis=1) if pool else features, length)
            self.sizes.append(len(member))
            states.extend(member)
        return states

    def step(self, tokens, states: list):
        import tensorflow as tf

        log_probs, new_states, begin = [], [], 0
        for stepper, size in zip(self.steppers, self.sizes, strict=True):
            logits, member_states, _ = stepper.step(tokens, states[begin : begin + size])
            log_probs.append(tf.nn.log_softmax(logits))
            new_states.extend(member_states)
            begin += size
        return tf.add_n(log_probs) / len(log_probs), new_states, None
