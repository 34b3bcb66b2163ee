"""A training run as data: ``TrainConfig``, its fields the params the train stage reads (``captioner.params``), built
once, checked once, and saved in the model card. Plain data: reading params and cards never starts TensorFlow, so a
bad param fails at once, before the train stage readies its process for the config (``captioner.process.prepare``)
and TensorFlow takes seconds to start."""

from __future__ import annotations

from dataclasses import asdict, field

from captioner import CaptionerError
from captioner import params as param_rules
from captioner.model.spec import TRAINING_ONLY, DecoderSpec

STRATEGIES = ("auto", "mirrored", "multi_worker", "default")  # captioner.training.distribute.strategy_named
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")  # Keras dtype policies
# Which epoch's weights are kept: the lowest dev loss, or the best greedy dev BLEU-4 or CIDEr-D (scored every
# epoch); the dev loss paces training either way.
SELECT_BY = ("dev_loss", "dev_bleu4", "dev_cider")


@param_rules.settings("decoder", "dataset", "encoder", "member", *TRAINING_ONLY, "train")
class TrainConfig:
    """Everything a training run reads from params: the decoder it builds, what it trains on, and how (the
    ``train`` params; see docs/params.md). ``TrainConfig()`` is the defaults'; an ensemble member's config holds its
    own overrides."""

    decoder: DecoderSpec = field(default_factory=DecoderSpec)
    member: str | None = None  # the ensemble member it trains, or None: the main model

    @classmethod
    def from_params(cls, params) -> TrainConfig:
        """The config of the train stage's params (``train_member@<name>``: with the member's overrides); a
        CaptionerError for settings that cannot train together."""
        member, decoder, train = member_settings(params)
        sections = {"decoder": decoder, "train": train}
        values = {}
        for key, name in param_rules.param_fields(cls).items():
            section, _, leaf = name.rpartition(".")
            values[key] = sections[section][leaf] if section else params[name]
        config = cls(decoder=DecoderSpec.from_params(decoder), member=member, **values)
        config.check()
        return config

    def check(self) -> None:
        self.decoder.check()
        if self.self_critical_epochs and self.finetune_from is not None:
            raise CaptionerError("train.self_critical_epochs needs a frozen encoder: set train.finetune_from to null")

    @property
    def selection_score(self) -> str | None:
        """The greedy dev score (``bleu4`` | ``cider``) that keeps a teacher-forced epoch's weights, or None: the dev
        loss keeps them (``select_by: dev_loss``)."""
        return {"dev_bleu4": "bleu4", "dev_cider": "cider"}.get(self.select_by)

    @property
    def self_critical_score(self) -> str:
        """The greedy dev score that keeps a self-critical epoch's weights: the selection score, or BLEU-4 when the
        dev loss selects (self-critical training has no dev loss to keep by)."""
        return self.selection_score or "bleu4"

    @property
    def scores_dev(self) -> bool:
        """Whether training scores greedy dev captions: to select, or to keep a self-critical epoch."""
        return self.selection_score is not None or self.self_critical_epochs > 0

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
