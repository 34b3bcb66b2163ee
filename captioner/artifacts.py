"""Reading the pipeline's own outputs back: a corrupt, truncated or mismatched one is one line naming the file,
what is wrong with it and how to get a good one, raised where it is read.

How to get a good one comes from dvc.yaml, the one place that says which stage writes which output.
"""

from __future__ import annotations

import contextlib
import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from captioner import CaptionerError
from captioner.files import sha256_of

# What a damaged file of any format raises while it is parsed; a bug elsewhere still shows its traceback.
DAMAGE = (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, RecursionError)


def remedy(path: Path | str) -> str:
    """How to get a good copy of ``path``: ``dvc checkout`` and the stage that writes it, as the dvc.yaml of the
    project it is in (the nearest folder above it holding one) says."""
    import yaml  # here, not at the top: model code reports damaged artifacts and reads no YAML itself

    project = next((folder for folder in Path(path).parents if (folder / "dvc.yaml").is_file()), None)
    target = PurePosixPath(Path(path).relative_to(project).as_posix()) if project else PurePosixPath()
    try:
        stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"] if project else {}
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        stages = {}
    for stage, definition in stages.items():
        template = definition.get("do", definition)
        for out in template.get("outs", []) + template.get("metrics", []):
            name = next(iter(out)) if isinstance(out, dict) else out
            in_git = isinstance(out, dict) and (out[name] or {}).get("cache") is False
            pattern = "[^/]+".join(re.escape(part) for part in re.split(r"\$\{[^}]*\}", name))
            for candidate in (target, *target.parents):
                if re.fullmatch(pattern, str(candidate)):
                    key = f"@{candidate.name}" if "${key}" in name else ""
                    rebuild = f"`dvc repro -f -s {stage}{key}` rebuilds it"
                    if in_git:
                        return f"`git checkout {candidate}` restores it, or {rebuild}"
                    cached = _cached_copy(project, str(candidate), str(target))
                    if cached == "damaged":
                        return f"DVC's cached copy is damaged too (a corrupt cache or remote): {rebuild}"
                    fetch = "pull" if cached == "missing" else "checkout"
                    return f"`dvc {fetch} {candidate}` restores it, or {rebuild}"
    return "rebuild it with `dvc repro`, or point at a good copy"


def _cached_copy(project: Path, out: str, file: str) -> str:
    """What DVC's cache holds of ``file`` (inside the output ``out``) as ``dvc.lock`` records it: "good" bytes,
    "damaged" ones (the object's bytes do not match its hash: a corrupt cache or remote), "missing" (``dvc pull``
    fetches it), or "unknown" (no record)."""
    import yaml

    try:
        lock = yaml.safe_load((project / "dvc.lock").read_text())
        recorded = [entry for stage in lock["stages"].values() for entry in stage.get("outs", [])]
        digest = next(entry["md5"] for entry in recorded if entry["path"] == out)
    except (OSError, KeyError, TypeError, AttributeError, StopIteration, yaml.YAMLError):
        return "unknown"
    cache = project / ".dvc" / "cache" / "files" / "md5"
    try:
        if digest.endswith(".dir"):  # a folder: its manifest lists each file's hash
            manifest = json.loads((cache / digest[:2] / digest[2:]).read_text())
            relative = PurePosixPath(file).relative_to(out).as_posix()
            digest = next(entry["md5"] for entry in manifest if entry["relpath"] == relative)
        actual = sha256_of(cache / digest[:2] / digest[2:], "md5")
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        return "missing"
    return "good" if actual == digest else "damaged"


def damaged(path: Path | str, what: str) -> CaptionerError:
    """The one-line error for an output ``path`` that ``what`` describes the damage of."""
    return CaptionerError(f"{path}: {what}; {remedy(path)}")


@contextlib.contextmanager
def reading(path: Path | str, what: str) -> Iterator[None]:
    """Any ``DAMAGE`` raised inside becomes ``damaged(path, f"{what} (<the library's reason>)")``."""
    try:
        yield
    except CaptionerError:
        raise
    except DAMAGE as err:
        text = f"no {err}" if isinstance(err, KeyError) else str(err).strip()
        reason = text.splitlines()[0][:120] if text else type(err).__name__
        raise damaged(path, f"{what} ({reason})") from err


def read_json(path: Path | str, kind: type = dict):
    """The JSON value in ``path``, of type ``kind``; a missing, truncated or other file is ``damaged``."""
    if not Path(path).is_file():
        raise damaged(path, "missing" if not Path(path).exists() else "not a regular file")
    with reading(path, "not readable JSON (truncated or overwritten?)"):
        value = json.loads(Path(path).read_bytes())
    if not isinstance(value, kind):
        raise damaged(path, f"holds a JSON {type(value).__name__}, not the {kind.__name__} this file has")
    return value
