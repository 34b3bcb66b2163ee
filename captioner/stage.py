"""What every stage script shares: its declared params (read, checked, recorded), and ``run``, which readies the
process, calls the script's ``main`` on the project's ``Layout`` and turns a CaptionerError into one line."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from captioner import CaptionerError, process
from captioner import params as param_rules
from captioner.files import remove_dead_scratch
from captioner.layout import Layout


class Params(dict):
    """The params a stage declared in dvc.yaml, and only those: reading another is a bug. It remembers which it
    read (``read``, dotted names), for the test that keeps dvc.yaml's lists equal to what the stages read."""

    def __init__(self, values=(), prefix: str = "", read: set[str] | None = None, whole: str | None = None):
        super().__init__(values)
        self.prefix, self.read, self.whole = prefix, set() if read is None else read, whole

    def __missing__(self, key):
        raise KeyError(f"param {self.prefix + key!r} is not declared for this stage in dvc.yaml")

    def __getitem__(self, key):
        value = super().__getitem__(key)
        if not isinstance(value, Params):
            self.read.add(self.prefix + key)
        elif value.whole:  # a declared param whose value is a mapping (ensemble)
            self.read.add(value.whole)
        return value

    def __iter__(self):  # not dict's: dict(params) and f(**params) then read each value through __getitem__
        return super().__iter__()

    def items(self):
        return [(key, self[key]) for key in self]

    def values(self):
        return [self[key] for key in self]

    def get(self, key, default=None):
        return self[key] if key in self else default

    def merged(self, overrides: dict) -> Params:
        """These params with ``overrides`` over them (an ensemble member's), reading nothing yet."""
        return Params({key: dict.__getitem__(self, key) for key in self} | overrides, self.prefix, self.read)


def _lookup(tree: dict, dotted: str):
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise CaptionerError(f"params.yaml has no {dotted!r}")
        node = node[part]
    return node


MAX_YAML_BYTES = 1 << 20  # params.yaml is a few KB; a file far bigger is no params file


def _read_yaml(path: Path, aliases: bool = False) -> dict:
    """A YAML mapping from one of the project's own files, read as DVC reads it (ruamel.yaml, YAML 1.2: ``yes`` is
    text, ``1e-3`` a number), so a run sees the values ``dvc.lock`` records; a missing, broken or oversized one, or
    unless ``aliases`` (dvc.yaml's own) one using aliases (``*name``: a few lines of them can expand to gigabytes),
    is one line naming it."""
    from ruamel.yaml import YAML, YAMLError
    from ruamel.yaml.events import AliasEvent

    restore = f"`git checkout {path.name}` restores it"
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise CaptionerError(f"{path}: {size >> 20} MB, not a params file; {restore}")
        text, reader = path.read_text(encoding="utf-8"), YAML(typ="safe", pure=True)
        if not aliases and any(isinstance(event, AliasEvent) for event in reader.parse(text)):
            raise CaptionerError(f"{path}: uses a YAML alias (*name); write each value out")
        value = reader.load(text)
    except (OSError, UnicodeDecodeError, YAMLError) as err:
        raise CaptionerError(f"{path}: not readable YAML ({' '.join(str(err).split())[:160]}); {restore}") from None
    if not isinstance(value, dict):
        raise CaptionerError(f"{path}: holds a {type(value).__name__}, not a mapping; {restore}")
    return value


def stage_param_names(pipeline: dict, stage: str, member: str | None = None) -> list[str]:
    """The params dvc.yaml lists for ``stage`` (with ``member``: for that key of the ``foreach`` stage
    ``<stage>_member``), as dotted names; entries of the form ``{params.yaml: [names]}`` flattened."""
    if member is None:
        entries = pipeline["stages"][stage].get("params", [])
    else:
        entries = pipeline["stages"][f"{stage}_member"]["do"]["params"]
    names = []
    for entry in entries:
        if isinstance(entry, dict) and set(entry) != {"params.yaml"}:
            raise CaptionerError(f"dvc.yaml: stage {stage} lists params of {', '.join(entry)}; stages read params.yaml")
        names += [entry] if isinstance(entry, str) else entry["params.yaml"]
    return [name.replace("${key}", member) for name in names] if member else names


def declared_params(stage: str, root: Path = Path("."), member: str | None = None) -> Params:
    """The values from params.yaml of the params dvc.yaml lists for ``stage`` (whole sections, or single params),
    plus the ``speed`` section, which no stage lists (it changes no output byte). Every param of those sections is
    checked against its rule in ``captioner.params`` (a CaptionerError naming the first that breaks it, or a
    typo)."""
    pipeline, values = _read_yaml(root / "dvc.yaml", aliases=True), _read_yaml(root / "params.yaml")
    names = [*stage_param_names(pipeline, stage, member), param_rules.SPEED]
    sections = {name.split(".")[0] for name in names}
    for section in sections - {"ensemble"}:  # the whole section, so a misspelt key is caught too
        param_rules.check(section, _lookup(values, section))
    param_rules.check_memory({section: values[section] for section in sections & {"features", "train"}})
    params = Params()
    for name in names:
        node, target = params, name.split(".")
        for depth, part in enumerate(target[:-1], start=1):
            node = node.setdefault(part, Params(prefix=".".join(target[:depth]) + ".", read=params.read))
        leaf, members = _lookup(values, name), target[0] == "ensemble"  # a param whose value is a mapping
        if members:
            param_rules.check(name, leaf)  # a ParamError, which run() reports like any CaptionerError
        whole = name if members else None  # read whole, unlike a section
        node[target[-1]] = Params(leaf, f"{name}.", params.read, whole=whole) if isinstance(leaf, dict) else leaf
    return params


def _member_argument() -> str | None:
    return sys.argv[2] if sys.argv[1:2] == ["--member"] and len(sys.argv) > 2 else None


PARAMS_READ = "CAPTIONER_PARAMS_READ"  # a file: each stage run appends "<stage> <the params it read>"


def run(main: Callable[[Params, Layout], None], process_for: Callable[[Params], dict] | None = None) -> int:
    """Run a stage script's ``main`` on its declared params and the project it belongs to; the exit status.

    The stage is named after its script (``stages/train.py`` is stage ``train``; ``stages/train.py --member
    NAME`` is ``train_member@NAME``), the project is the script's folder's parent, from any working directory.
    Dead writers' temporaries go first; then the process is readied (``captioner.process.prepare``, with the
    settings ``process_for`` gives for these params), so a stage script imports TensorFlow's side of the library
    inside ``main``, not at its top. A CaptionerError, or an operating-system fault at a path (read-only, disk
    full, no rights), becomes one line on stderr and exit status 1.
    """
    script = Path(sys.modules["__main__"].__file__).resolve()
    layout = Layout(os.path.relpath(script.parent.parent))  # paths in messages as the user would type them
    params = Params()
    try:
        remove_dead_scratch(layout.output_roots)
        params = declared_params(script.stem, layout.root, member=_member_argument())
        process.prepare(**(process_for(params) if process_for else {}))
        main(params, layout)
    except CaptionerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        if err.filename is None:  # not a fault of a path: a bug, with its traceback
            raise
        print(f"error: {err.filename}: {err.strerror}", file=sys.stderr)
        return 1
    except Exception as err:  # TensorFlow's, or Python's, report of memory the machine did not have
        if not isinstance(err, MemoryError) and type(err).__name__ != "ResourceExhaustedError":
            raise
        sizes = ", ".join(sorted(name for name in params.read if name.endswith(("batch_size", "image_size"))))
        print(
            f"error: out of memory ({type(err).__name__}); lower this stage's sizes: {sizes or 'none read'}",
            file=sys.stderr,
        )
        return 1
    if os.environ.get(PARAMS_READ):  # the end-to-end tests' record of which params each stage read
        with open(os.environ[PARAMS_READ], "a", encoding="utf-8") as record:
            print(script.stem, *sorted(params.read), file=record)
    return 0
