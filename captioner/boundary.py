"""The trust boundary: every name and record that a data file brings in passes here, once.

Split lists, caption files, a Kaggle ``captions.txt``, a Karpathy split JSON and archive members all name
files. ``confine`` is the one rule for such a name: a plain relative name, resolved inside its root, no
symlink out of it. ``kaggle_rows`` reads CSV so that no row can swallow its neighbours, and ``field`` checks
the type of one value of a JSON entry. Each refusal is a ``CaptionerError`` naming the file and the entry.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from captioner import CaptionerError

MAX_CAPTION_CHARS = 5_000  # Flickr8k's longest caption has ~400; a field this long is a quote left open
MAX_QUOTED_LINES = 4  # physical lines one quoted caption may span
_CONTROL = re.compile(r"[\x00-\x1f]")
_ROW_START = re.compile(r'[^",\s]+\.[A-Za-z0-9]{2,5},')  # "<image name>.<ext>," opening a line: a new row


def confine(root: Path | str, name, where: str, flat: bool = True) -> Path:
    """``root / name`` for a ``name`` read from a data file (``where`` says which file, entry and field, e.g.
    ``captions.txt:7: image``), or a CaptionerError. The name must be text, relative, without ``..``, control
    characters, backslash or drive letter, and (when ``flat``, as image names in the release layout are) a single
    component; the path, symlinks resolved, must stay inside ``root``."""
    if not isinstance(name, str):
        raise CaptionerError(f"{where} {shown(name)} is not text")
    problem = _problem(name, flat)
    if problem:
        raise CaptionerError(f"{where} {shown(name)} {problem}; names in data files must stay inside their folder")
    joined = Path(root) / name
    if flat and not os.path.islink(joined):
        return joined  # one component, not a link: inside by construction (and 1 system call, not a realpath)
    inside, real = _real(str(root)), os.path.realpath(joined)
    if os.path.commonpath([inside, real]) != inside:
        raise CaptionerError(f"{where} {shown(name)} is a link to {real}, outside {root}; refusing to follow it")
    return joined


@functools.lru_cache(maxsize=64)
def _real(root: str) -> str:
    """The resolved root: the same for every name of a file, so resolved once."""
    return os.path.realpath(root)


def _problem(name: str, flat: bool) -> str | None:
    path = PurePosixPath(name)
    checks = (
        (name in ("", "."), "is empty"),
        (_CONTROL.search(name) is not None, "holds a control character (NUL, tab, newline…)"),
        ("\\" in name, "holds a backslash"),
        (path.is_absolute() or re.match(r"[A-Za-z]:", name) is not None, "is absolute"),
        (".." in path.parts, "climbs out with '..'"),
        (flat and (len(path.parts) != 1 or name != path.name), "is not a plain file name"),
    )
    return next((problem for failed, problem in checks if failed), None)


def field(entry: dict, key: str, kind: type | tuple[type, ...], where: str = "", default=...):
    """``entry[key]`` if it has the type ``kind`` (``default`` when the key is absent and a default is given),
    else a CaptionerError naming ``where`` (the file and entry) and the key."""
    prefix = f"{where}: " if where else ""
    if key not in entry and default is not ...:
        return default
    if key not in entry:
        raise CaptionerError(f"{prefix}{key} is missing")
    value, kinds = entry[key], kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        wanted = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)
        raise CaptionerError(f"{prefix}{key} is {shown(value)}; it must be {wanted}")
    return value


def shown(value, width: int = 60) -> str:
    """``repr(value)`` cut to ``width`` characters: a hostile value never floods the one error line."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


_KIND_NAMES = {
    str: "text",
    list: "a list",
    dict: "an object",
    int: "a whole number",
    float: "a number",
    bool: "true or false",
    type(None): "null",
}


def kaggle_rows(path: Path, lines: Iterator[str]) -> Iterator[tuple[int, str, str]]:
    """``(line number, image, caption)`` of each row of a Kaggle ``captions.txt`` body (``lines``: the lines
    after the ``image,caption`` header; the first is line 2).

    An unquoted caption is everything after the first comma, commas and stray quotes included (Kaggle's copy
    has many such lines). A quoted one (``"…"`` with ``""`` for a quote) may span up to ``MAX_QUOTED_LINES``
    lines, each newline read as a space; a quote still open when a line starting a new row comes, at the end of
    the file, or past that many lines or ``MAX_CAPTION_CHARS`` is a CaptionerError naming the file and line,
    never a row swallowing its neighbours. A row without an image name yields an empty image for the caller to
    count."""
    numbered = enumerate(lines, start=2)
    for number, line in numbered:
        image, comma, rest = line.partition(",")
        image = image.strip()
        if image.startswith('"') and image.endswith('"') and len(image) > 1:
            image = image[1:-1]
        if not rest.lstrip().startswith('"'):
            _check_length(path, number, rest)
            yield number, image, rest if comma else ""
            continue
        yield number, image, _quoted(path, number, rest.lstrip()[1:], numbered)


def _quoted(path: Path, opened: int, text: str, numbered: Iterator[tuple[int, str]]) -> str:
    """The caption of a quoted field that opened on line ``opened`` with ``text`` after its quote."""
    parts, spanned = [], 1
    while True:
        closing = _closing_quote(text)
        if closing is not None:
            parts.append(text[:closing])
            after = text[closing + 1 :]
            if after.strip():
                raise CaptionerError(f"{path}:{opened}: text after the closing quote ({after.strip()[:30]!r})")
            caption = " ".join(parts).replace('""', '"')
            _check_length(path, opened, caption)
            return caption
        parts.append(text)
        _check_length(path, opened, " ".join(parts))
        following = next(numbered, None)
        if following is None:
            raise CaptionerError(f"{path}:{opened}: a quote opened here never closes (end of file)")
        number, text = following
        spanned += 1
        if _ROW_START.match(text) or spanned > MAX_QUOTED_LINES:
            raise CaptionerError(
                f"{path}:{opened}: a quote opened here is still open at line {number}; close it or remove it"
            )


def _closing_quote(text: str) -> int | None:
    """Index of the quote that closes a quoted field in ``text`` (``""`` is an escaped quote), or None."""
    index = 0
    while (index := text.find('"', index)) != -1:
        if text[index + 1 : index + 2] == '"':
            index += 2
            continue
        return index
    return None


def _check_length(path: Path, number: int, caption: str) -> None:
    if len(caption) > MAX_CAPTION_CHARS:
        raise CaptionerError(
            f"{path}:{number}: a caption of over {MAX_CAPTION_CHARS} characters; a quote left open, or not captions?"
        )
