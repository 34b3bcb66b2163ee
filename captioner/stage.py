"""What every stage script shares: the project layout, its declared params, atomic writes."""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

from captioner import CaptionerError, kernels
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


def _read_yaml(path: Path) -> dict:
    """A YAML mapping from one of the project's own files; a missing or broken one is one line naming it."""
    restore = f"`git checkout {path.name}` restores it"
    try:
        value = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
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
    """The values from params.yaml of the params dvc.yaml lists for ``stage``, plus the speed-only params
    (``captioner.params.SPEED_ONLY``) of the sections it reads. Every param of those sections is checked against
    its rule in ``captioner.params`` (a CaptionerError naming the first that breaks it, or a typo)."""
    pipeline, values = _read_yaml(root / "dvc.yaml"), _read_yaml(root / "params.yaml")
    names = stage_param_names(pipeline, stage, member)
    sections = {name.split(".")[0] for name in names}
    names += [name for name in param_rules.SPEED_ONLY if name.split(".")[0] in sections]
    for section in sections - {"ensemble"}:  # the whole section, so a misspelt key is caught too
        param_rules.check(section, _lookup(values, section))
    params = Params()
    for name in names:
        node, target = params, name.split(".")
        for depth, part in enumerate(target[:-1], start=1):
            node = node.setdefault(part, Params(prefix=".".join(target[:depth]) + ".", read=params.read))
        leaf = _lookup(values, name)
        if name.startswith("ensemble"):
            param_rules.check(name, leaf)  # a ParamError, which run() reports like any CaptionerError
        node[target[-1]] = Params(leaf, f"{name}.", params.read, whole=name) if isinstance(leaf, dict) else leaf
    return params


def choice(value: str, allowed, what: str) -> str:
    """``value`` if it is one of ``allowed``, else a CaptionerError listing them."""
    if value not in allowed:
        raise CaptionerError(f"unknown {what} {value!r}; choose one of: {', '.join(sorted(allowed))}")
    return value


# What the machine, not the code, makes a write fail with: a full or read-only disk, a file size limit, rights.
WRITE_FAULTS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling of ``target`` to write (a file or a folder); rename it into place on success.

    On any failure the temporary is removed, so a half-written output never sits where DVC looks; one
    that a killed run (kill -9, power loss) could not remove goes at the next write of the same target.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_scratch(target)
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent))
    except OSError as err:
        raise CaptionerError(f"{target}: cannot write here: {err.strerror or err}") from None
    temporary = scratch / target.name
    try:
        yield temporary
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(temporary, target)
    except OSError as err:
        if err.errno not in WRITE_FAULTS:
            raise
        raise CaptionerError(f"{err.filename or target}: {err.strerror} (while writing {target})") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


SCRATCH = re.compile(r"\.(?P<target>.+)\.(?P<pid>\d+)\.[a-z0-9_]+\.tmp")  # atomic_path's temporaries
OUTPUT_ROOTS = (Path("data"), Path("models"), Path("metrics"), Path("ensemble"), Path("logs"))


def remove_stale_scratch(target: Path) -> None:
    """Remove temporaries of ``target`` but those of a live process (``atomic_path``'s, or an older version's)."""
    for scratch in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        _remove_unless_live(scratch)


def remove_dead_scratch(roots: tuple[Path, ...] = OUTPUT_ROOTS) -> None:
    """Remove every ``atomic_path`` temporary under ``roots`` whose writer no longer runs (a killed stage's)."""
    for root in roots:
        for folder, folders, files in os.walk(root):
            for name in [*folders, *files]:
                if SCRATCH.fullmatch(name) and _remove_unless_live(Path(folder) / name) and name in folders:
                    folders.remove(name)


def _remove_unless_live(path: Path) -> bool:
    match = SCRATCH.fullmatch(path.name)
    if match and _running(int(match["pid"])):
        return False  # another live process is writing it
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    return True


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
        return None, params["decoder"], params["train"]
    ((name, overrides),) = members.items()
    decoder, train = (params[section].merged(overrides.get(section, {})) for section in ("decoder", "train"))
    return name, decoder, train


def _member_argument() -> str | None:
    return sys.argv[2] if sys.argv[1:2] == ["--member"] and len(sys.argv) > 2 else None


_read_before_start: set[str] = set()  # params size_thread_pools read, for the record run() keeps


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
    settings = member_settings(params)[2]
    if settings["threads_per_op"]:
        os.environ["TF_NUM_INTRAOP_THREADS"] = str(settings["threads_per_op"])
    kernels.for_precision(settings["precision"])
    _read_before_start.update(params.read)


PARAMS_READ = "CAPTIONER_PARAMS_READ"  # a file: each stage run appends "<stage> <the params it read>"


def run(main: Callable[[Params], None]) -> None:
    """Run a stage script's ``main`` with its declared params, from the project root.

    The stage is named after its script (``stages/train.py`` is stage ``train``; ``stages/train.py --member
    NAME`` is ``train_member@NAME``); a CaptionerError, or an operating-system fault at a path (read-only,
    disk full, no rights), becomes one line on stderr and exit status 1. Dead writers' temporaries go first.
    """
    script = Path(sys.modules["__main__"].__file__).resolve()
    os.chdir(script.parent.parent)
    try:
        remove_dead_scratch()
        params = declared_params(script.stem, member=_member_argument())
        main(params)
        if os.environ.get(PARAMS_READ):  # the end-to-end tests' record of which params each stage read
            with open(os.environ[PARAMS_READ], "a", encoding="utf-8") as record:
                print(script.stem, *sorted(params.read | _read_before_start), file=record)
    except CaptionerError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except OSError as err:
        if err.filename is None:  # not a fault of a path: a bug, with its traceback
            raise
        print(f"error: {err.filename}: {err.strerror}", file=sys.stderr)
        sys.exit(1)


def progress(iterable=None, **kwargs):
    """A tqdm bar on a terminal; nothing in logs and pipes, where carriage-return updates only add noise."""
    from tqdm import tqdm

    return tqdm(iterable, disable=None, mininterval=1.0, **kwargs)
