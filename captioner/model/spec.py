"""A decoder's architecture as data: ``DecoderSpec``, its fields the ``decoder`` params (``captioner.params``),
saved in the model card and read back on load. Plain data: reading it never starts TensorFlow."""

from __future__ import annotations

from dataclasses import asdict, fields

from captioner import CaptionerError, artifacts
from captioner import params as param_rules

ARCHS = ("merge", "inject", "attention", "transformer")  # captioner.model.decoder.ARCHITECTURES builds each
POSITIONS = ("learned", "sinusoidal")  # the transformer's position encodings
RNN_STATES = {"gru": 1, "lstm": 2}  # the recurrent cells and the states each carries
TRANSFORMER = ("layers", "heads", "ff_units", "positions", "tie_embeddings", "context")  # the transformer's alone
# Decoder params that shape training, not the architecture: the run's config holds them (TrainConfig).
TRAINING_ONLY = ("decoder.embeddings", "decoder.attention_reg")


@param_rules.settings("decoder", leave_out=TRAINING_ONLY)
class DecoderSpec:
    """A decoder's architecture: each ``decoder`` param but the training-only ones (``TRAINING_ONLY``); see
    docs/params.md. A recurrent decoder's card leaves out the transformer's fields (``TRANSFORMER``)."""

    def reads_grid(self, stored: str) -> bool:
        """Whether the decoder reads the H×W feature grid (not the pooled vector) of features stored with pooling
        ``stored`` (avg | grid): attention always; the transformer when the features hold a grid (else it attends
        over the pooled vector as a one-cell grid); merge and inject never."""
        return self.arch == "attention" or (self.arch == "transformer" and stored == "grid")

    @property
    def num_states(self) -> int:
        return RNN_STATES[self.rnn]

    def card(self) -> dict:
        """The spec as the model card holds it: a recurrent decoder's without the transformer's fields (which do not
        shape it), so its card reads as before they existed."""
        saved = asdict(self)
        return saved if self.arch == "transformer" else {key: saved[key] for key in saved if key not in TRANSFORMER}

    def check_fits(self, max_length: int) -> None:
        """A CaptionerError unless captions of ``max_length`` tokens fit the transformer's positions (it reads all
        but the last)."""
        if self.arch == "transformer" and max_length - 1 > self.context:
            raise CaptionerError(
                f"vocab.max_length {max_length} needs {max_length - 1} positions, more than decoder.context "
                f"{self.context}: raise decoder.context"
            )

    def check(self) -> None:
        if self.arch == "transformer" and self.units % self.heads:
            raise CaptionerError(f"decoder.units {self.units} must be a multiple of decoder.heads {self.heads}")

    @classmethod
    def from_params(cls, params: dict) -> DecoderSpec:
        """The spec of the ``decoder`` section's values ``params``."""
        return cls(**{item.name: params[item.name] for item in fields(cls)})

    @classmethod
    def from_card(cls, card: dict, source: str) -> DecoderSpec:
        """The spec a model card holds under ``decoder``; a CaptionerError naming what is missing."""
        saved = card.get("decoder")
        if not isinstance(saved, dict):
            raise CaptionerError(f"{source} has no decoder spec (saved by an earlier version); retrain: dvc repro")
        transformer = saved.get("arch") == "transformer"
        own = [item.name for item in fields(cls) if transformer or item.name not in TRANSFORMER]
        missing = [name for name in own if name not in saved]
        if missing:
            raise CaptionerError(f"{source}: the decoder spec lacks {', '.join(missing)}; retrain: dvc repro")
        try:  # the spec's fields are decoder params: the same rules hold
            for name in own:
                param_rules.check(f"decoder.{name}", saved[name])
            spec = cls(**{name: saved[name] for name in own})
            spec.check()
        except CaptionerError as err:
            raise artifacts.damaged(source, f"its decoder spec: {err}") from None
        return spec
