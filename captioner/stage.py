"""What every stage script shares: the project layout, its declared params, atomic writes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml


class Layout:
    """Every path a stage reads or writes, relative to the project root; dvc.yaml names the same."""

    raw = Path("data/raw")
    images = raw / "Flicker8k_Dataset"  # the Flickr8k release's own spelling
    captions_file = raw / "Flickr8k.token.txt"
    downloads = Path("data/downloads")  # partial downloads survive here for resume; not a DVC output
    captions = Path("data/captions")
    vocab = Path("data/vocab.json")
    features = Path("data/features")
    models = Path("models")  # the trained decoder and its card (see captioner.captioning)
    model = models / "captioner.keras"
    train_log = Path("metrics/train")
    scores = Path("metrics/scores.json")
    test_captions = Path("metrics/test_captions.tsv")
    figures = Path("metrics/figures")

    @staticmethod
    def split_list(split: str) -> Path:
        return Layout.raw / f"Flickr_8k.{split}Images.txt"

    @staticmethod
    def split_captions(split: str) -> Path:
        return Layout.captions / f"{split}.tsv"

    @staticmethod
    def features_file(encoder: str) -> Path:
        return Layout.features / f"{encoder}.h5"


SPLITS = ("train", "dev", "test")


class StageError(Exception):
    """A problem with the stage's input or params, reported to the user as one line."""


class Params(dict):
    """The params a stage declared in dvc.yaml, and only those: reading another is a bug."""

    def __missing__(self, key):
        raise KeyError(f"param {key!r} is not declared for this stage in dvc.yaml")


def _lookup(tree: dict, dotted: str):
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise StageError(f"params.yaml has no {dotted!r}")
        node = node[part]
    return node


def declared_params(stage: str, root: Path = Path(".")) -> Params:
    """The values from params.yaml of the params dvc.yaml lists for ``stage``."""
    pipeline = yaml.safe_load((root / "dvc.yaml").read_text())
    values = yaml.safe_load((root / "params.yaml").read_text())
    names = pipeline["stages"][stage].get("params", [])
    params = Params()
    for name in names:
        node, target = params, name.split(".")
        for part in target[:-1]:
            node = node.setdefault(part, Params())
        leaf = _lookup(values, name)
        node[target[-1]] = Params(leaf) if isinstance(leaf, dict) else leaf
    return params


def choice(value: str, allowed, what: str) -> str:
    """``value`` if it is one of ``allowed``, else a StageError listing them."""
    if value not in allowed:
        raise StageError(f"unknown {what} {value!r}; choose one of: {', '.join(sorted(allowed))}")
    return value


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling of ``target`` to write (a file or a folder); rename it into place on success.

    On any failure the temporary is removed, so a half-written output never sits where DVC looks.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    temporary = scratch / target.name
    try:
        yield temporary
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(temporary, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_text(target: Path | str, text: str) -> None:
    with atomic_path(target) as temporary:
        temporary.write_text(text)


def run(main: Callable[[Params], None]) -> None:
    """Run a stage script's ``main`` with its declared params, from the project root.

    The stage is named after its script (``stages/train.py`` is stage ``train``); a StageError
    becomes one line on stderr and exit status 1.
    """
    script = Path(sys.modules["__main__"].__file__).resolve()
    os.chdir(script.parent.parent)
    try:
        main(declared_params(script.stem))
    except StageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


def progress(iterable=None, **kwargs):
    """A tqdm bar on a terminal; nothing in logs and pipes, where carriage-return updates only add noise."""
    from tqdm import tqdm

    return tqdm(iterable, disable=None, mininterval=1.0, **kwargs)
