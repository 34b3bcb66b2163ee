"""Files written all or nothing, text read strictly, checksums and progress bars: the small helpers every
module that touches files shares."""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from captioner import CaptionerError

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
    except Exception as err:
        fault = _tensorflow_write_fault(err)
        if fault is None:
            raise
        raise CaptionerError(f"{target}: {fault} (while writing {target})") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# TensorFlow's writers (SavedModel, TensorFlow Lite, checkpoints) report a full disk or a file-size limit as errors
# of their own, the system's words at the end of the message.
_TENSORFLOW_WRITE_ERRORS = {"OutOfRangeError", "ResourceExhaustedError", "PermissionDeniedError", "UnknownError"}
_SYSTEM_WORDS = [os.strerror(code) for code in WRITE_FAULTS]


def _tensorflow_write_fault(err: Exception) -> str | None:
    """The system's words (``File too large``, ``No space left on device``…) when ``err`` is TensorFlow reporting
    a write the machine refused, else None."""
    if not type(err).__module__.startswith("tensorflow") or type(err).__name__ not in _TENSORFLOW_WRITE_ERRORS:
        return None
    message = str(err)
    return next((words for words in _SYSTEM_WORDS if words.lower() in message.lower()), None)


SCRATCH = re.compile(r"\.(?P<target>.+)\.(?P<pid>\d+)\.[a-z0-9_]+\.tmp")  # atomic_path's temporaries


def remove_stale_scratch(target: Path) -> None:
    """Remove temporaries of ``target`` but those of a live process (``atomic_path``'s, or an older version's)."""
    for scratch in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        _remove_unless_live(scratch)


def remove_dead_scratch(roots: tuple[Path, ...]) -> None:
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


def sha256_of(path: Path, algorithm: str = "sha256") -> str:
    """The hex digest of the file at ``path``, read a megabyte at a time (another ``algorithm``: DVC's md5)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


MAX_LINE_BYTES = 1 << 20  # a caption line is ~100 bytes, a GloVe 300d line ~3 KB


def text_lines(path: Path | str) -> Iterator[str]:
    """The lines of a UTF-8 text file, without line ends; a byte-order mark is ignored. Streams, so a GloVe
    file of a gigabyte costs one line of memory, and a line is read at most ``MAX_LINE_BYTES`` at a time. A byte that
    is not UTF-8, or a longer line, is a CaptionerError naming file and line."""
    if not Path(path).is_file():
        raise CaptionerError(f"{path} is missing")
    with open(path, "rb") as stream:
        for number, raw in enumerate(iter(lambda: stream.readline(MAX_LINE_BYTES + 1), b""), start=1):
            if len(raw) > MAX_LINE_BYTES:
                raise CaptionerError(f"{path}:{number}: a line of over {MAX_LINE_BYTES >> 20} MB; not a text file?")
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


def progress(iterable=None, **kwargs):
    """A tqdm bar on a terminal; nothing in logs and pipes, where carriage-return updates only add noise."""
    from tqdm import tqdm

    return tqdm(iterable, disable=None, mininterval=1.0, **kwargs)
