"""What each param in params.yaml may hold: one declarative rule per param, checked when a stage reads it.

A bad value stops the stage before any work with one line naming the param, the value and what is
allowed (``captioner.stage.run`` prints it as ``error: …``). Choices that a library module defines
(decoder architectures, encoders, …) are named as ``"module:ATTRIBUTE"`` and looked up only when a
stage that reads the param checks it, so each list of choices has one home.
"""

from __future__ import annotations

import importlib
import math
import numbers
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from captioner import CaptionerError


class ParamError(CaptionerError):
    """A param value outside its rule; the message is one line for the user."""


@dataclass(frozen=True)
class Rule:
    kind: str  # "integer" | "number" | "text" | "flag" | "choice" | "list" | "members" (ensemble)
    low: float | None = None  # inclusive
    high: float | None = None  # inclusive
    above: float | None = None  # exclusive lower bound
    below: float | None = None  # exclusive upper bound
    choices: tuple[str, ...] | str = ()  # the values, or "module:ATTRIBUTE" holding them
    pattern: str | None = None  # for text: a regular expression the whole value must match
    optional: bool = False  # null (None) allowed
    why: str = ""  # the reason for the bound, when it is worth knowing
    item: Rule | None = None  # for a list: the rule of each entry

    def allowed(self) -> str:
        if self.kind == "choice":
            text = "one of: " + ", ".join(sorted(self.resolved_choices()))
        elif self.kind in ("integer", "number"):
            bounds = [
                f"{sign} {int(value) if float(value).is_integer() else f'{value:g}'}"
                for sign, value in (("≥", self.low), (">", self.above), ("≤", self.high), ("<", self.below))
                if value is not None
            ]
            text = f"{'an integer' if self.kind == 'integer' else 'a finite number'} {' and '.join(bounds)}".strip()
        elif self.kind == "flag":
            text = "true or false"
        elif self.kind == "list":
            text = f"a list, each entry {self.item.allowed()}"
        else:
            text = "text" + (f" matching {self.pattern}" if self.pattern else "")
        return text + (" or null" if self.optional else "")

    def resolved_choices(self) -> tuple[str, ...]:
        if isinstance(self.choices, str):
            module, attribute = self.choices.split(":")
            return tuple(getattr(importlib.import_module(module), attribute))
        return self.choices

    def accepts(self, value) -> bool:
        if value is None:
            return self.optional
        if self.kind == "flag":
            return isinstance(value, bool)
        if self.kind == "list":
            return isinstance(value, list) and all(self.item.accepts(entry) for entry in value)
        if self.kind == "text":
            matches = self.pattern is None or re.fullmatch(self.pattern, str(value))
            return isinstance(value, str) and value != "" and bool(matches)
        if self.kind == "choice":
            return isinstance(value, str) and value in self.resolved_choices()
        wanted = numbers.Integral if self.kind == "integer" else numbers.Real
        if isinstance(value, bool) or not isinstance(value, wanted) or not math.isfinite(value):
            return False  # .inf and .nan too: no bound holds them
        return (
            (self.low is None or value >= self.low)
            and (self.high is None or value <= self.high)
            and (self.above is None or value > self.above)
            and (self.below is None or value < self.below)
        )


def integer(low: int | None = 1, high: int | None = None, **kw) -> Rule:
    return Rule("integer", low=low, high=high, **kw)


def number(**kw) -> Rule:
    return Rule("number", **kw)


def one_of(choices: tuple[str, ...] | str, **kw) -> Rule:
    return Rule("choice", choices=choices, **kw)


def text(**kw) -> Rule:
    return Rule("text", **kw)


def list_of(item: Rule, **kw) -> Rule:
    return Rule("list", item=item, optional=True, **kw)


FLAG, SEED, FRACTION = Rule("flag"), integer(low=0), number(above=0, below=1)
SHA256 = text(pattern="[0-9a-fA-F]{64}", optional=True)

RULES: dict[str, Rule] = {
    "dataset": one_of("captioner.datasets:DATASETS"),
    "encoder": one_of("captioner.encoders:REGISTRY"),
    "shapes.num_images": integer(low=10, high=1_000_000),
    "shapes.image_size": integer(low=16, high=2048),
    "shapes.dev_fraction": FRACTION,
    "shapes.test_fraction": FRACTION,
    "shapes.seed": SEED,
    "flickr8k.images_url": text(),
    "flickr8k.images_sha256": SHA256,
    "flickr8k.text_url": text(),
    "flickr8k.text_sha256": SHA256,
    "flickr8k.kaggle_dir": text(optional=True),
    "karpathy.split_url": text(),
    "karpathy.split_sha256": SHA256,
    "karpathy.split_file": text(pattern=r"[^/\\]+\.json"),
    "karpathy.image_urls": list_of(text()),
    "karpathy.image_sha256": list_of(SHA256),
    "karpathy.images_dir": text(),
    "karpathy.restval": FLAG,
    "features.weights": text(),  # imagenet | none | a file: captioner.encoders checks which
    "features.image_size": integer(low=32, high=2048, optional=True),
    "features.pooling": one_of("captioner.features:POOLINGS"),
    "features.batch_size": integer(high=4096),
    "vocab.min_count": integer(),
    "vocab.max_length": integer(low=3, high=1000, why="<start>, one word and <end>"),
    "decoder.rnn": one_of("captioner.config:RNN_STATES"),
    "decoder.arch": one_of("captioner.config:ARCHS"),
    "decoder.units": integer(high=16384),
    "decoder.embedding_dim": integer(high=16384),
    "decoder.dropout": number(low=0, below=1),
    "decoder.embeddings": text(),  # learned | a GloVe file: captioner.text checks which
    "decoder.train_embeddings": FLAG,
    "decoder.attention_units": integer(high=16384),
    "decoder.attention_reg": number(low=0),
    "decoder.layers": integer(high=64),
    "decoder.heads": integer(high=256),
    "decoder.ff_units": integer(high=65536),
    "decoder.positions": one_of("captioner.config:POSITIONS"),
    "decoder.tie_embeddings": FLAG,
    "decoder.context": integer(low=2, high=4096),
    "train.batch_size": integer(high=65536),
    "train.epochs": integer(high=10_000),
    "train.learning_rate": number(above=0),
    "train.clipnorm": number(above=0),
    "train.select_by": one_of("captioner.config:SELECT_BY"),
    "train.patience": integer(high=10_000),
    "train.lr_patience": integer(low=0, high=10_000),
    "train.lr_factor": number(above=0, high=1),
    "train.seed": SEED,
    "train.strategy": one_of("captioner.config:STRATEGIES"),
    "train.precision": one_of("captioner.config:PRECISIONS"),
    "train.threads_per_op": integer(low=0, high=1024),
    "train.finetune_from": text(optional=True),
    "train.encoder_lr": number(above=0),
    "train.self_critical_epochs": integer(low=0, high=10_000),
    "train.self_critical_lr": number(above=0),
    "train.self_critical_samples": integer(low=2, high=100, why="each sample's baseline is the others' mean reward"),
    "ensemble": Rule("members"),  # member name → decoder/train overrides, each by its own rule: _check_members
    "evaluate.beam_size": integer(high=100),
    "evaluate.length_penalty": number(low=0),
    "evaluate.max_len": integer(high=1000),
    "evaluate.batch_size": integer(high=65536),
}


# Params that change how fast a stage runs, never a byte of its outputs (tests/test_pipeline.py proves each):
# dvc.yaml does not list them, so changing one reruns nothing; a stage reading their section may read them.
# Not features.batch_size: the encoder's convolutions sum in another order at another batch size (other bits).
SPEED_ONLY = ("evaluate.batch_size", "train.threads_per_op")


def check(name: str, value) -> None:
    """ParamError unless ``value`` fits the rule of param ``name`` (a dotted leaf name) or, for a section,
    every leaf under it fits its rule and the section holds no param without one (a typo)."""
    if name.split(".")[0] == "ensemble":
        return _check_members(name, value)
    if isinstance(value, dict):
        for key, leaf in value.items():
            check(f"{name}.{key}", leaf)
        return
    if name not in RULES:
        raise ParamError(f"params.yaml has {name}, which is no param of this pipeline (a typo?)")
    rule = RULES[name]
    if rule.accepts(value):
        return
    if rule.kind == "choice" and value is not None:  # the wording of captioner.params.choice
        raise ParamError(f"unknown {name} {value!r}; choose {rule.allowed()}")
    raise ParamError(f"{name} is {value!r}{': ' + rule.why if rule.why else ''}; it must be {rule.allowed()}")


MEMBER_SECTIONS = ("decoder", "train")  # what an ensemble member may set its own way; it shares the rest


def _check_members(name: str, value) -> None:
    """``ensemble`` maps member names to overrides of ``MEMBER_SECTIONS`` params, e.g. ``{seed2: {train: {seed: 2}}}``;
    ``ensemble.<name>`` is one member's overrides. Each override follows its param's rule."""
    members = value if name == "ensemble" else {name.split(".", 1)[1]: value}
    if not isinstance(members, dict):
        raise ParamError(
            f"ensemble is {members!r}; it must map member names to their params, e.g. seed2: {{train: {{seed: 2}}}}"
        )
    for member, overrides in members.items():
        if not re.fullmatch(r"[A-Za-z0-9_-]+", str(member)):
            raise ParamError(f"ensemble member name {member!r}: use letters, digits, _ and - (it names a folder)")
        if not isinstance(overrides, dict) or set(overrides) - set(MEMBER_SECTIONS):
            raise ParamError(
                f"ensemble.{member} is {overrides!r}; it must set params of "
                f"{' and '.join(MEMBER_SECTIONS)} only, e.g. {{train: {{seed: 2}}}}"
            )
        for section, values in overrides.items():
            if not isinstance(values, dict) or not values:
                raise ParamError(f"ensemble.{member}.{section} is {values!r}; it must map param names to values")
            for key, leaf in values.items():
                check(f"{section}.{key}", leaf)


def choice(value: str, allowed, what: str) -> str:
    """``value`` if it is one of ``allowed``, else a CaptionerError listing them."""
    if value not in allowed:
        raise CaptionerError(f"unknown {what} {value!r}; choose one of: {', '.join(sorted(allowed))}")
    return value


# Bytes per image pixel a batch of images costs the encoder at least: 190, measured as the peak memory of
# EfficientNet-Lite0's forward pass at 8 and at 128 images of 224² (825 and 1,964 MB, 2026-12-07). Fine-tuning
# keeps more alive for its backward pass; a lower bound refuses only what cannot fit.
BYTES_PER_PIXEL = 190
UNSIZED_IMAGE = 300  # features.image_size null: the encoder's own size, at most this among the encoders offered


def machine_memory() -> int:
    """Bytes of memory this process may use: the machine's, or its container's limit where lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return total
    return min(total, int(limit)) if limit.isdigit() else total


def check_memory(values: dict, memory: int | None = None) -> None:
    """ParamError when the size params in ``values`` (params.yaml's sections), each within its bounds, together ask
    for more memory than the machine has (``memory`` bytes, by default ``machine_memory()``): the batch of images
    the encoder holds at once, extracting features or fine-tuning it (at least ``BYTES_PER_PIXEL`` a pixel)."""
    memory = memory or machine_memory()
    features, train = values.get("features") or {}, values.get("train") or {}
    size = features.get("image_size") or UNSIZED_IMAGE
    batches = []
    if "batch_size" in features:
        batches.append(("features.batch_size", features["batch_size"]))
    if train.get("finetune_from") and "batch_size" in train:
        batches.append(("train.batch_size", train["batch_size"]))
    for name, batch in batches:
        _refuse_beyond(
            memory, batch * size * size * BYTES_PER_PIXEL, f"{name} {batch} × features.image_size {size}²", "either"
        )


def check_feature_batch(batch_size: int, feature_shape: tuple[int, ...], memory: int | None = None) -> None:
    """ParamError when ``train.batch_size`` batches of features of ``feature_shape`` (a grid: cells × channels) need
    more memory than the machine has, at least 4 bytes a value twice (the batch and its gradient's activations)."""
    what = f"train.batch_size {batch_size} × features of {' × '.join(map(str, feature_shape))}"
    needed = batch_size * int(np.prod(feature_shape)) * 8
    _refuse_beyond(memory or machine_memory(), needed, what, "train.batch_size or features.image_size")


def _refuse_beyond(memory: int, needed: int, what: str, lower: str) -> None:
    """The one line of the memory rules: ``what`` needs ``needed`` bytes, more than ``memory``."""
    if needed > memory:
        raise ParamError(
            f"{what} needs ~{needed / 2**30:.0f} GB at once, more than this machine's {memory / 2**30:.0f} GB; "
            f"lower {lower}"
        )
