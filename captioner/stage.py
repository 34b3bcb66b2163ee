"""What every stage script shares: the project layout, its declared params, atomic writes."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

from captioner import CaptionerError
from captioner import params as param_rules


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
    train_log = Path("metrics/train")  # DVCLive's folder: plots/ per epoch, metrics.json the training summary
    timings = Path("logs/train_epochs.tsv")  # seconds per epoch: outside git, they change every run
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


class Params(dict):
    """The params a stage declared in dvc.yaml, and only those: reading another is a bug."""

    def __missing__(self, key):
        raise KeyError(f"param {key!r} is not declared for this stage in dvc.yaml")


def _lookup(tree: dict, dotted: str):
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise CaptionerError(f"params.yaml has no {dotted!r}")
        node = node[part]
    return node


def declared_params(stage: str, root: Path = Path("."), member: str | None = None) -> Params:
    """The values from params.yaml of the params dvc.yaml lists for ``stage``, each checked against its rule
    in ``captioner.params`` (a CaptionerError naming the first that breaks it). With ``member``, those of the
    ``foreach`` stage ``<stage>_member`` for that key (``${key}`` in its param names)."""
    pipeline = yaml.safe_load((root / "dvc.yaml").read_text())
    values = yaml.safe_load((root / "params.yaml").read_text())
    if member is None:
        names = pipeline["stages"][stage].get("params", [])
    else:
        names = [name.replace("${key}", member) for name in pipeline["stages"][f"{stage}_member"]["do"]["params"]]
    params = Params()
    for name in names:
        node, target = params, name.split(".")
        for part in target[:-1]:
            node = node.setdefault(part, Params())
        leaf = _lookup(values, name)
        param_rules.check(name, leaf)  # a ParamError, which run() reports like any CaptionerError
        node[target[-1]] = Params(leaf) if isinstance(leaf, dict) else leaf
    return params


def choice(value: str, allowed, what: str) -> str:
    """``value`` if it is one of ``allowed``, else a CaptionerError listing them."""
    if value not in allowed:
        raise CaptionerError(f"unknown {what} {value!r}; choose one of: {', '.join(sorted(allowed))}")
    return value


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling of ``target`` to write (a file or a folder); rename it into place on success.

    On any failure the temporary is removed, so a half-written output never sits where DVC looks; one
    that a killed run (kill -9, power loss) could not remove goes at the next write of the same target.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_scratch(target)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent))
    temporary = scratch / target.name
    try:
        yield temporary
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(temporary, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def remove_stale_scratch(target: Path) -> None:
    """Remove temporaries of ``target`` that ``atomic_path`` made in a process no longer running."""
    for scratch in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        owner = scratch.name[len(target.name) + 2 :].split(".")[0]
        if owner.isdigit() and _running(int(owner)):
            continue  # another live process is writing it
        if scratch.is_dir() and not scratch.is_symlink():
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            scratch.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def text_lines(path: Path | str) -> Iterator[str]:
    """The lines of a UTF-8 text file, without line ends; a byte-order mark is ignored. Streams, so a GloVe
    file of a gigabyte costs one line of memory. A byte that is not UTF-8 is a CaptionerError naming file and line."""
    if not Path(path).is_file():
        raise CaptionerError(f"{path} is missing")
    with open(path, "rb") as stream:
        for number, raw in enumerate(stream, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise CaptionerError(
                    f"{path}:{number}: byte 0x{raw[err.start]:02x} at column {err.start + 1} is not UTF-8; "
                    "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
                ) from None
            yield line.rstrip("\r\n")


def read_text(path: Path | str) -> str:
    """A whole UTF-8 text file as ``text_lines`` reads it, lines joined by newlines."""
    return "\n".join(text_lines(path))


def write_text(target: Path | str, text: str) -> None:
    with atomic_path(target) as temporary:
        temporary.write_text(text)


def member_settings(params: dict) -> tuple[str | None, dict, dict]:
    """(member name or None, decoder params, train params) of a train stage: the main model's, or for
    ``train_member@<name>`` (whose declared params hold ``ensemble.<name>``) those with its overrides."""
    members = params["ensemble"] if "ensemble" in params else {}
    if not members:
        return None, dict(params["decoder"]), dict(params["train"])
    ((name, overrides),) = members.items()
    return (
        name,
        {**params["decoder"], **overrides.get("decoder", {})},
        {**params["train"], **overrides.get("train", {})},
    )


def _member_argument() -> str | None:
    return sys.argv[2] if sys.argv[1:2] == ["--member"] and len(sys.argv) > 2 else None


def size_thread_pools(stage: str) -> None:
    """Give each TensorFlow op ``train.threads_per_op`` CPU threads (0 leaves TensorFlow's default: all cores).

    TensorFlow reads ``TF_NUM_INTRAOP_THREADS`` once, when it starts, so a stage script calls this before
    importing it. A bad param is left for ``run`` to report.
    """
    if "tensorflow" in sys.modules:
        raise RuntimeError("size_thread_pools must run before TensorFlow is imported")
    root = Path(sys.modules["__main__"].__file__).resolve().parent.parent
    try:
        params = declared_params(stage, root, member=_member_argument())
    except CaptionerError:
        return
    threads = member_settings(params)[2]["threads_per_op"]
    if threads:
        os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)


def run(main: Callable[[Params], None]) -> None:
    """Run a stage script's ``main`` with its declared params, from the project root.

    The stage is named after its script (``stages/train.py`` is stage ``train``; ``stages/train.py --member
    NAME`` is ``train_member@NAME``); a CaptionerError becomes one line on stderr and exit status 1.
    """
    script = Path(sys.modules["__main__"].__file__).resolve()
    os.chdir(script.parent.parent)
    try:
        main(declared_params(script.stem, member=_member_argument()))
    except CaptionerError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


def progress(iterable=None, **kwargs):
    """A tqdm bar on a terminal; nothing in logs and pipes, where carriage-return updates only add noise."""
    from tqdm import tqdm

    return tqdm(iterable, disable=None, mininterval=1.0, **kwargs)
