"""Every param of params.yaml, declared once (``PARAMS``: its rule, default and meaning), and the rules' check.

params.yaml and docs/params.md are written from the declarations (``python -m captioner.params``), and the config
types take their fields from them (``settings``). A bad value stops the stage before any work with one line naming
the param, the value and what is allowed (``captioner.stage.run`` prints it as ``error: …``). Choices that a
library module defines (decoder architectures, encoders, …) are named as ``"module:ATTRIBUTE"`` and looked up only
when a stage that reads the param checks it, so each list of choices has one home.
"""

from __future__ import annotations

import importlib
import math
import numbers
import os
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field, fields
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


@dataclass(frozen=True)
class Param:
    """One param of params.yaml: what it may hold, its default (the committed params.yaml's value) and what it does."""

    rule: Rule
    default: object
    doc: str


# Every param, in params.yaml's order, with the sections' own lines. params.yaml and docs/params.md are written from
# this table (`python -m captioner.params`; a test keeps both current), and the config types take their fields and
# defaults from it (``settings``), so a new knob is one entry here and the code that reads it.
SECTIONS: dict[str, str] = {
    "shapes": "the generated default dataset",
    "flickr8k": "the public release; local paths and file:// URLs work too",
    "karpathy": "a corpus in Karpathy's split format (split_url: a zip or a .json path); see the README",
    "features": "the encoder's output cached per image (the extract_features stage)",
    "vocab": "the words the decoder knows (the build_vocab stage)",
    "decoder": "the decoder's architecture, and how its words start (the train stage)",
    "train": "how the decoder learns (the train stage)",
    "evaluate": "how captions are decoded: the evaluate and export stages",
    "speed": "how fast stages run, never what they write: changing one reruns nothing",
}
PARAMS: dict[str, Param] = {
    "dataset": Param(
        one_of("captioner.datasets:DATASETS"),
        "shapes",
        "shapes (generated, offline) | flickr8k | karpathy (Flickr30k, COCO, …)",
    ),
    "encoder": Param(
        one_of("captioner.features.encoders:REGISTRY"),
        "efficientnet_lite0",
        "efficientnet_lite0/1/2 (offline weights), vgg16, resnet50, …: captioner/features/encoders.py",
    ),
    "shapes.num_images": Param(integer(low=10, high=1_000_000), 2000, "size of the generated set"),
    "shapes.image_size": Param(integer(low=16, high=2048), 128, "its image side, in pixels"),
    "shapes.dev_fraction": Param(FRACTION, 0.1, "share of images in the dev split"),
    "shapes.test_fraction": Param(FRACTION, 0.1, "share of images in the test split"),
    "shapes.seed": Param(SEED, 7, "seed of the generator"),
    "flickr8k.images_url": Param(
        text(),
        "https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/Flickr8k_Dataset.zip",
        "URL, file:// URL or local path of the images zip",
    ),
    "flickr8k.images_sha256": Param(SHA256, None, "its checksum to verify; null: print the checksum instead"),
    "flickr8k.text_url": Param(
        text(),
        "https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/Flickr8k_text.zip",
        "the same for the captions zip",
    ),
    "flickr8k.text_sha256": Param(SHA256, None, "its checksum; null prints it"),
    "flickr8k.kaggle_dir": Param(
        text(optional=True),
        None,
        "a local folder with Images/ and captions.txt (Kaggle's layout), used instead of the zips",
    ),
    "karpathy.split_url": Param(
        text(),
        "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip",
        "URL or path of Karpathy's zip of split files, or of one split .json",
    ),
    "karpathy.split_sha256": Param(SHA256, None, "its checksum; null prints it"),
    "karpathy.split_file": Param(
        text(pattern=r"[^/\\]+\.json"),
        "dataset_coco.json",
        "the JSON read from that zip: dataset_{flickr8k,flickr30k,coco}.json",
    ),
    "karpathy.image_urls": Param(
        list_of(text()), [], "zips extracted into images_dir once (COCO: train2014.zip and val2014.zip)"
    ),
    "karpathy.image_sha256": Param(list_of(SHA256), [], "one per image_urls entry, or empty: print them instead"),
    "karpathy.images_dir": Param(
        text(), "data/downloads/images", "root of each image's filepath/filename (Flickr30k: your own copy)"
    ),
    "karpathy.restval": Param(FLAG, True, "COCO's restval images train too (the usual 113k-image train split)"),
    "features.weights": Param(
        text(), "imagenet", "imagenet | none (random, seed 0) | path to a Keras .weights.h5 file"
    ),  # captioner.features.encoders checks which
    "features.image_size": Param(
        integer(low=32, high=2048, optional=True), None, "null: the encoder's default input size (its registry entry)"
    ),
    "features.pooling": Param(
        one_of("captioner.features.extraction:POOLINGS"),
        "avg",
        "avg: one pooled vector per image | grid: the H×W×C map (7×7×1280 for Lite0), for attention",
    ),
    "features.batch_size": Param(
        integer(high=4096),
        32,
        "images per forward pass; not speed-only: at another batch size the convolutions sum in another order",
    ),
    "vocab.min_count": Param(integer(), 2, "rarer train words become <unk>"),
    "vocab.max_length": Param(
        integer(low=3, high=1000, why="<start>, one word and <end>"),
        34,
        "longest train caption kept, in tokens with <start> and <end>",
    ),
    "decoder.rnn": Param(one_of("captioner.model.spec:RNN_STATES"), "gru", "gru | lstm"),
    "decoder.arch": Param(
        one_of("captioner.model.spec:ARCHS"),
        "inject",
        "merge | inject | attention (needs features.pooling: grid) | transformer: see docs/design.md",
    ),
    "decoder.units": Param(integer(high=16384), 512, "the recurrent state's size; the transformer's model width"),
    "decoder.embedding_dim": Param(
        integer(high=16384), 256, "word vector size: the GloVe dimension when embeddings is GloVe (50 for glove-6b-50d)"
    ),
    "decoder.dropout": Param(
        number(low=0, below=1), 0.3, "on word vectors, image features and RNN outputs (the transformer: each residual)"
    ),
    "decoder.attention_units": Param(integer(high=16384), 256, "attention only: size of the scoring layer"),
    "decoder.attention_reg": Param(
        number(low=0), 1.0, "attention only: weight of the doubly stochastic term (0 turns it off)"
    ),
    "decoder.embeddings": Param(
        text(),
        "learned",
        "learned | glove-6b-50d (shipped by pip, offline) | path to a GloVe text file",
    ),  # captioner.text checks which
    "decoder.train_embeddings": Param(FLAG, True, "false keeps loaded word vectors fixed"),
    "decoder.layers": Param(
        integer(high=64),
        2,
        "transformer only: decoder blocks; it attends over the grid (features.pooling: grid) or the pooled vector",
    ),
    "decoder.heads": Param(integer(high=256), 8, "transformer only: attention heads (units must be a multiple)"),
    "decoder.ff_units": Param(integer(high=65536), 2048, "transformer only: width of each block's feed-forward net"),
    "decoder.positions": Param(
        one_of("captioner.model.spec:POSITIONS"), "learned", "transformer only: learned | sinusoidal"
    ),
    "decoder.tie_embeddings": Param(
        FLAG, False, "transformer only: the output projection is the embedding matrix transposed"
    ),
    "decoder.context": Param(
        integer(low=2, high=4096),
        64,
        "transformer only: the most positions it reads (vocab.max_length − 1 and evaluate.max_len must fit)",
    ),
    "train.batch_size": Param(
        integer(high=65536), 128, "captions per step over all replicas (the Flickr8k presets' too)"
    ),
    "train.epochs": Param(integer(high=10_000), 15, "at most (the Flickr8k presets set 30)"),
    "train.learning_rate": Param(
        number(above=0), 0.0014, "Adam, for the decoder: 0.001 × √2 for batch 128 (the Flickr8k presets set 0.001)"
    ),
    "train.clipnorm": Param(number(above=0), 5.0, "gradient clipping per variable"),
    "train.select_by": Param(
        one_of("captioner.training.config:SELECT_BY"),
        "dev_loss",
        "dev_loss | dev_bleu4 | dev_cider (greedy, scored every epoch): which epoch's weights are kept",
    ),
    "train.patience": Param(
        integer(high=10_000), 3, "epochs without a lower dev loss before stopping (the kept weights restored)"
    ),
    "train.lr_patience": Param(
        integer(low=0, high=10_000), 2, "epochs without a lower dev loss before the learning rate drops"
    ),
    "train.lr_factor": Param(number(above=0, high=1), 0.5, "what the learning rate is multiplied by then"),
    "train.seed": Param(SEED, 1, "same seed, same metrics on the same machine"),
    "train.strategy": Param(
        one_of("captioner.training.config:STRATEGIES"),
        "auto",
        "auto | mirrored | multi_worker (TF_CONFIG) | default; batch_size is split across replicas",
    ),
    "train.precision": Param(
        one_of("captioner.training.config:PRECISIONS"),
        "float32",
        "float32 | mixed_float16 (GPUs) | mixed_bfloat16 (TPUs, recent CPUs and GPUs)",
    ),
    "train.finetune_from": Param(
        text(optional=True),
        None,
        "null: frozen encoder, cached features | an encoder layer name: train it from there on",
    ),
    "train.encoder_lr": Param(number(above=0), 0.0001, "learning rate of the fine-tuned encoder layers"),
    "train.self_critical_epochs": Param(
        integer(low=0, high=10_000), 0, "after teacher forcing: epochs of self-critical training on CIDEr-D (0: none)"
    ),
    "train.self_critical_lr": Param(number(above=0), 0.00005, "its Adam learning rate"),
    "train.self_critical_patience": Param(
        integer(high=10_000),
        8,
        "self-critical epochs without a higher greedy dev score before it stops (the best kept); its first "
        "epochs may wander before the score climbs",
    ),
    "train.self_critical_samples": Param(
        integer(low=2, high=100, why="each sample's baseline is the others' mean reward"),
        5,
        "captions sampled per image; each one's baseline is the others' mean reward",
    ),
    "ensemble": Param(
        Rule("members"),  # member name → decoder/train overrides, each by its own rule: _check_members
        {},
        "more decoders for evaluate to average with the main one: name → its decoder/train params, "
        "e.g. {seed2: {train: {seed: 2}}, attend: {decoder: {arch: attention}}}",
    ),
    "evaluate.beam_size": Param(integer(high=100), 3, "beam width; 1: greedy"),
    "evaluate.length_penalty": Param(
        number(low=0), 0.0, "final beam ranking by log-prob ÷ length**length_penalty (0: summed log-prob)"
    ),
    "evaluate.max_len": Param(integer(high=1000), 34, "generated tokens at most"),
    "speed.threads_per_op": Param(
        integer(low=0, high=1024),
        1,
        "CPU threads one TensorFlow op may use in training; 0: all cores (the Flickr8k presets' bigger steps)",
    ),
    "speed.decode_batch_size": Param(integer(high=65536), 256, "images evaluate decodes together"),
}
RULES: dict[str, Rule] = {name: param.rule for name, param in PARAMS.items()}
SPEED = "speed"  # the section no stage lists in dvc.yaml, and every stage may read


def declared(*names: str) -> list[str]:
    """The dotted names of these params in the order given, a section's name standing for all of its params."""
    return [name for wanted in names for name in PARAMS if name == wanted or name.startswith(wanted + ".")]


_TYPES = {"integer": "int", "number": "float", "text": "str", "flag": "bool", "choice": "str", "list": "list"}


def settings(*names: str, leave_out: tuple[str, ...] = ()) -> Callable[[type], type]:
    """A class decorator: the class becomes a frozen dataclass whose fields are the params ``names`` (a section's
    name: all its params) but those in ``leave_out``, each named by its last part, typed by its rule, defaulting to
    its declared default and knowing its dotted name (``metadata["param"]``). A name that is one of the class's own
    fields places that field there; its other own fields come first."""

    def build(cls: type) -> type:
        own = dict(cls.__dict__.get("__annotations__", {}))
        annotations = {key: kind for key, kind in own.items() if key not in names}
        for wanted in names:
            if wanted in own:
                annotations[wanted] = own[wanted]
                continue
            for name in declared(wanted):
                if name not in leave_out:
                    param, key = PARAMS[name], name.rsplit(".", 1)[-1]
                    annotations[key] = _TYPES[param.rule.kind] + (" | None" if param.rule.optional else "")
                    setattr(cls, key, field(default=param.default, metadata={"param": name}))
        cls.__annotations__ = annotations
        return dataclass(frozen=True)(cls)

    return build


def param_fields(cls: type) -> dict[str, str]:
    """A ``settings`` class's fields that are params: field name → the param's dotted name."""
    return {item.name: item.metadata["param"] for item in fields(cls) if "param" in item.metadata}


# params.yaml as written from PARAMS: a comment column, long values on their own line as DVC writes them back
# (so `dvc exp run -S a.b=x` changes that line alone), comments wrapped within the line width.
COMMENT_COLUMN, LINE_WIDTH, VALUE_WIDTH = 29, 120, 80
HEADER = (
    "# Every knob of the pipeline: its allowed values are in captioner/params.py, its meaning here and in\n"
    "# docs/params.md (both written from there: python -m captioner.params). dvc.yaml lists the sections each\n"
    "# stage reads.\n"
)


def yaml_scalar(value) -> str:
    """``value`` as params.yaml writes it (YAML 1.2, as DVC reads it: a float never in exponent form)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and "e" in repr(value):
        return np.format_float_positional(value)
    if isinstance(value, (list, dict)):
        return "[]" if isinstance(value, list) else "{}"
    return str(value)


def _commented(line: str, doc: str) -> list[str]:
    """``line`` with ``doc`` as its comment, wrapped onto comment lines of its own at the comment column."""
    lines, width = [], LINE_WIDTH - COMMENT_COLUMN - 2
    for chunk in textwrap.wrap(doc, width) or [""]:
        column = max(COMMENT_COLUMN, len(line) + 2)
        lines.append(f"{line:<{column}}# {chunk}" if chunk else line)
        line = ""
    return lines


def params_yaml() -> str:
    """The text of params.yaml with every param at its default."""
    lines, section = [HEADER.rstrip("\n")], None
    for name, param in PARAMS.items():
        head, _, key = name.rpartition(".")
        if head != section and head:
            lines += ["", *_commented(f"{head}:", SECTIONS[head])]
        elif not head and section:
            lines.append("")
        section, indent = head, "  " if head else ""
        value = yaml_scalar(param.default)
        if len(f"{indent}{key}: {value}") > VALUE_WIDTH:  # its comment above: DVC would move one after the key
            lines += [f"{indent}# {chunk}" for chunk in textwrap.wrap(param.doc, LINE_WIDTH - len(indent) - 2)]
            lines += [f"{indent}{key}: ", f"{indent}  {value}"]
        else:
            lines += _commented(f"{indent}{key}: {value}".rstrip(), param.doc)
    return "\n".join(lines) + "\n"


def params_table() -> str:
    """docs/params.md's table: every param, its default, what it may hold and what it does."""
    rows = ["| param | default | allowed | meaning |", "|---|---|---|---|"]
    for name, param in PARAMS.items():
        default = "null" if param.default is None else yaml_scalar(param.default)
        allowed = "see below" if param.rule.kind == "members" else param.rule.allowed()
        meaning = param.doc.replace("|", "\\|")  # a table cell's bar
        rows.append(f"| `{name}` | `{default}` | {allowed} | {meaning} |")
    return "\n".join(rows) + "\n"


TABLE_START, TABLE_END = "<!-- params table: python -m captioner.params -->\n", "<!-- end of params table -->\n"


def reference_with_table(reference: str) -> str:
    """docs/params.md's text ``reference`` with its table written anew between its markers."""
    before, _, rest = reference.partition(TABLE_START)
    _, _, after = rest.partition(TABLE_END)
    return before + TABLE_START + params_table() + TABLE_END + after


def main(root: Path = Path(".")) -> None:
    """Write params.yaml (every param at its default) and docs/params.md's table from ``PARAMS``."""
    reference = root / "docs" / "params.md"
    (root / "params.yaml").write_text(params_yaml(), encoding="utf-8")
    reference.write_text(reference_with_table(reference.read_text(encoding="utf-8")), encoding="utf-8")


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


if __name__ == "__main__":
    main()
