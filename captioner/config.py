"""A training run as data: ``DecoderSpec`` (the decoder's architecture) and ``TrainConfig`` (the whole run), built
from the train stage's params once, checked once, and saved in the model card. Plain data: reading params and
cards never starts TensorFlow, so a bad param fails at once, before the train stage readies its process for the
config (``captioner.process.prepare``) and TensorFlow takes seconds to start."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

from captioner import CaptionerError, artifacts
from captioner import params as param_rules

if TYPE_CHECKING:
    from captioner.stage import Params

ARCHS = ("merge", "inject", "attention", "transformer")  # captioner.decoder.ARCHITECTURES builds each
POSITIONS = ("learned", "sinusoidal")  # the transformer's position encodings
RNN_STATES = {"gru": 1, "lstm": 2}  # the recurrent cells and the states each carries
STRATEGIES = ("auto", "mirrored", "multi_worker", "default")  # captioner.distribute.strategy_named
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")  # Keras dtype policies
# Which epoch's weights are kept: the lowest dev loss, or the best greedy dev BLEU-4 or CIDEr-D (scored every
# epoch); the dev loss paces training either way.
SELECT_BY = ("dev_loss", "dev_bleu4", "dev_cider")


@dataclass(frozen=True)
class DecoderSpec:
    """A decoder's architecture as data: built from the ``decoder`` params, saved in the model card, read back
    on load. Training-only settings (initial embeddings, the attention penalty's weight) are not part of it."""

    rnn: str  # gru | lstm
    arch: str  # merge | inject | attention | transformer
    units: int  # the recurrent state's size; the transformer's model width
    embedding_dim: int
    dropout: float
    attention_units: int = 256
    train_embeddings: bool = True
    # The transformer's alone (a recurrent decoder's card leaves them out):
    layers: int = 2
    heads: int = 8
    ff_units: int = 2048
    positions: str = "learned"
    tie_embeddings: bool = False
    context: int = 64  # the most positions it reads: captions and decoding's max_len must fit

    @property
    def needs_grid(self) -> bool:
        """Whether the decoder needs the H×W feature grid (attention) rather than the pooled vector."""
        return self.arch == "attention"

    def pooled(self, stored: str) -> bool:
        """Whether the decoder reads pooled vectors from features stored with pooling ``stored`` (avg | grid): the
        recurrent ones as their architecture says; the transformer attends over the grid when the features hold
        one, else over the pooled vector as a one-cell grid."""
        return stored == "avg" if self.arch == "transformer" else not self.needs_grid

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
        return cls(**{field.name: params[field.name] for field in fields(cls)})

    @classmethod
    def from_card(cls, card: dict, source: str) -> DecoderSpec:
        """The spec a model card holds under ``decoder``; a CaptionerError naming what is missing."""
        saved = card.get("decoder")
        if not isinstance(saved, dict):
            raise CaptionerError(f"{source} has no decoder spec (saved by an earlier version); retrain: dvc repro")
        transformer = saved.get("arch") == "transformer"
        own = [field.name for field in fields(cls) if transformer or field.name not in TRANSFORMER]
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


TRANSFORMER = ("layers", "heads", "ff_units", "positions", "tie_embeddings", "context")  # DecoderSpec's, its alone


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run reads from params: the decoder it builds, what it trains on, and how (the
    ``train`` params; see docs/params.md). An ensemble member's config holds its own overrides."""

    decoder: DecoderSpec
    dataset: str  # recorded in the model card, so the caption command can say when it was a toy one
    encoder: str  # whose cached features it reads
    member: str | None  # the ensemble member it trains, or None: the main model
    embeddings: str  # learned | a GloVe name or file (captioner.text.initial_embeddings)
    attention_reg: float
    batch_size: int
    epochs: int
    learning_rate: float
    clipnorm: float
    select_by: str
    patience: int
    lr_patience: int
    lr_factor: float
    seed: int
    strategy: str
    precision: str
    finetune_from: str | None
    encoder_lr: float
    self_critical_epochs: int
    self_critical_lr: float
    self_critical_samples: int

    @classmethod
    def from_params(cls, params: Params) -> TrainConfig:
        """The config of the train stage's params (``train_member@<name>``: with the member's overrides); a
        CaptionerError for settings that cannot train together."""
        member, decoder, train = member_settings(params)
        settings = {field.name: train[field.name] for field in fields(cls) if field.name in train}
        config = cls(
            decoder=DecoderSpec.from_params(decoder),
            dataset=params["dataset"],
            encoder=params["encoder"],
            member=member,
            embeddings=decoder["embeddings"],
            attention_reg=decoder["attention_reg"],
            **settings,
        )
        config.check()
        return config

    def check(self) -> None:
        self.decoder.check()
        if self.self_critical_epochs and self.finetune_from is not None:
            raise CaptionerError("train.self_critical_epochs needs a frozen encoder: set train.finetune_from to null")

    @property
    def metric(self) -> str:
        """The greedy dev score that keeps an epoch's weights (self-critical epochs: also under dev_loss)."""
        return "cider" if self.select_by == "dev_cider" else "bleu4"

    @property
    def selects(self) -> bool:
        """Whether a dev score, not the dev loss, keeps the teacher-forced epoch's weights."""
        return self.select_by != "dev_loss"

    @property
    def scores_dev(self) -> bool:
        """Whether training scores greedy dev captions: to select, or to keep a self-critical epoch."""
        return self.selects or self.self_critical_epochs > 0

    def card(self) -> dict:
        """What the model card records of this run (the decoder spec has its own entry)."""
        return {key: value for key, value in asdict(self).items() if key != "decoder"}


def member_settings(params: dict) -> tuple[str | None, dict, dict]:
    """(member name or None, decoder params, train params) of a train stage: the main model's, or for
    ``train_member@<name>`` (whose declared params hold ``ensemble.<name>``) those with its overrides."""
    members = params["ensemble"] if "ensemble" in params else {}
    if not members:
        return None, params["decoder"], params["train"]
    ((name, overrides),) = members.items()
    decoder, train = (params[section].merged(overrides.get(section, {})) for section in ("decoder", "train"))
    return name, decoder, train
