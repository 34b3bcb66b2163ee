"""Caption batches: token ids of the captions that fit, grouped by length, padded per batch, with their image
features read as each batch is made."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import tensorflow as tf

from captioner import CaptionerError
from captioner.text import Vocabulary


def encode_captions(
    captions: list[tuple[str, list[str]]], row_of: dict[str, int], vocab: Vocabulary
) -> tuple[np.ndarray, list[list[int]], int]:
    """Feature rows and token ids of the captions that fit; how many were dropped (too long or no features)."""
    rows, sequences = [], []
    for image, tokens in captions:
        if image in row_of and len(tokens) <= vocab.max_length:
            rows.append(row_of[image])
            sequences.append(vocab.encode(tokens))
    return np.array(rows, dtype=np.int64), sequences, len(captions) - len(rows)


def encode_split(
    split: str, captions: list[tuple[str, list[str]]], row_of: dict[str, int], vocab: Vocabulary
) -> tuple[np.ndarray, list[list[int]]]:
    """``encode_captions`` of one split, with a line saying what was kept; a CaptionerError if nothing was."""
    rows, sequences, dropped = encode_captions(captions, row_of, vocab)
    print(f"train: {len(rows)} {split} captions ({dropped} dropped: too long or image unreadable)")
    if not len(rows):
        raise CaptionerError(
            f"no {split} caption is usable ({dropped} longer than the vocabulary's {vocab.max_length} tokens "
            "or of images without features); nothing saved"
        )
    return rows, sequences


def pad(sequences: list[list[int]]) -> np.ndarray:
    """Right-pad with the pad id to the longest sequence given (per batch, not the global maximum)."""
    padded = np.full((len(sequences), max(map(len, sequences))), Vocabulary.pad_id, dtype=np.int32)
    for row, sequence in enumerate(sequences):
        padded[row, : len(sequence)] = sequence
    return padded


BUCKET_WINDOW = 50  # batches whose captions are sorted by length together: little padding, still well mixed


def length_buckets(lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """Caption indices grouped into batches of similar length, so few RNN steps and logits are padding.

    Without ``rng`` (dev, test) every caption is sorted by length. With it the captions are shuffled,
    sorted by length within windows of ``BUCKET_WINDOW`` batches, and the batches shuffled, so each
    call gives a new mix.
    """

    def sorted_batches(indices: np.ndarray) -> list[np.ndarray]:
        ordered = indices[np.argsort(lengths[indices], kind="stable")]
        return [ordered[begin : begin + batch_size] for begin in range(0, len(ordered), batch_size)]

    if rng is None:
        return sorted_batches(np.arange(len(lengths)))
    shuffled, window = rng.permutation(len(lengths)), batch_size * BUCKET_WINDOW
    groups = [
        batch for begin in range(0, len(shuffled), window) for batch in sorted_batches(shuffled[begin : begin + window])
    ]
    return [groups[index] for index in rng.permutation(len(groups))]


class CaptionBatches:
    """(features, tokens) NumPy batches of similar-length captions (``length_buckets``), each padded to
    its own longest caption; features come from ``read(rows)`` as each batch is made. Iterate it
    once per epoch; with ``seed`` each iteration is a new mix, repeatably.

    ``read`` may index an array in memory or stream from the HDF5 file, so the grid of a whole
    dataset never has to fit in RAM. Plain Python rather than ``tf.data.Dataset.from_generator``:
    on 2 CPU cores that wrapper cost ~5 ms per batch, ~8% of a batch-64 train step.
    """

    def __init__(
        self,
        read: Callable[[np.ndarray], np.ndarray],
        feature_shape: tuple[int, ...],
        rows: np.ndarray,
        sequences: list[list[int]],
        batch_size: int,
        seed: int | None = None,
    ):
        self.read, self.rows, self.sequences, self.batch_size = read, rows, sequences, batch_size
        self.lengths = np.array([len(sequence) for sequence in sequences])
        self.shuffler = np.random.default_rng(seed) if seed is not None else None
        self.element_spec = (
            tf.TensorSpec((None, *feature_shape), tf.float32),
            tf.TensorSpec((None, None), tf.int32),  # None: every batch has its own width
        )

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for picked in length_buckets(self.lengths, self.batch_size, self.shuffler):
            yield self.read(self.rows[picked]), self.tokens(picked)

    def tokens(self, picked: np.ndarray) -> np.ndarray:
        return pad([self.sequences[i] for i in picked])

    def __len__(self) -> int:
        return -(-len(self.sequences) // self.batch_size)

    def replica_dataset(self, context: tf.distribute.InputContext) -> tf.data.Dataset:
        """This machine's replicas' shares of the same global batches, for ``distribute_datasets_from_function``:
        each global batch cut into one consecutive slice per replica of the whole cluster, this machine's
        slices in turn (its strategy hands them to its replicas round-robin). Every machine makes every batch
        from the same seed, so the cluster steps through the batches of one process."""
        replicas = context.num_replicas_in_sync
        local = replicas // context.num_input_pipelines
        mine = range(context.input_pipeline_id * local, (context.input_pipeline_id + 1) * local)

        def slices():
            for features, tokens in self:
                bounds = np.linspace(0, len(tokens), replicas + 1).astype(int)
                for replica in mine:
                    yield features[bounds[replica] : bounds[replica + 1]], tokens[bounds[replica] : bounds[replica + 1]]

        return tf.data.Dataset.from_generator(slices, output_signature=self.element_spec).prefetch(2)


def captions_by_image(rows: np.ndarray, sequences: list[list[int]]) -> tuple[list[int], list[list[list[int]]]]:
    """Group ``training.encode_captions`` output by image: (feature rows in first-seen order, captions of each)."""
    grouped: dict[int, list[list[int]]] = {}
    for row, sequence in zip(rows.tolist(), sequences, strict=True):
        grouped.setdefault(row, []).append(sequence)
    return list(grouped), list(grouped.values())


class ImageCaptionBatches(CaptionBatches):
    """``CaptionBatches`` by image: each batch holds ``batch_size`` images' features and *all* their captions,
    ``per_image`` token rows each (all padding where an image has fewer), so a model can run an encoder
    once per image and repeat its output per caption. Images whose longest captions are alike are
    batched together."""

    def __init__(
        self,
        read: Callable[[np.ndarray], np.ndarray],
        feature_shape: tuple[int, ...],
        rows: np.ndarray,
        captions: list[list[list[int]]],
        per_image: int,
        batch_size: int,
        seed: int | None = None,
    ):
        super().__init__(read, feature_shape, rows, captions, batch_size, seed)
        self.lengths = np.array([max(map(len, group)) for group in captions])
        self.per_image = per_image

    def tokens(self, picked: np.ndarray) -> np.ndarray:
        missing = [[]] * self.per_image  # fully masked rows where an image has fewer captions
        return pad([caption for i in picked for caption in (self.sequences[i] + missing)[: self.per_image]])


def batches_by_image(
    encoded: dict[str, tuple[np.ndarray, list[list[int]]]],
    read: Callable[[np.ndarray], np.ndarray],
    feature_shape: tuple[int, ...],
    batch_size: int,
    seeds: dict[str, int | None],
    feature_rows: Callable[[list[int]], np.ndarray] = np.array,
) -> tuple[dict[str, ImageCaptionBatches], int]:
    """``ImageCaptionBatches`` per split of ``encode_captions`` output, about ``batch_size`` captions a step, each
    split's images read at ``feature_rows(their rows)``; and the caption rows per image."""
    grouped = {split: captions_by_image(rows, sequences) for split, (rows, sequences) in encoded.items()}
    # Every image contributes this many caption rows per step (empty, fully masked rows where it has fewer).
    per_image = max(len(captions) for _, groups in grouped.values() for captions in groups)
    batches = {
        split: ImageCaptionBatches(
            read,
            feature_shape,
            feature_rows(image_rows),
            groups,
            per_image,
            max(1, batch_size // per_image),
            seeds[split],
        )
        for split, (image_rows, groups) in grouped.items()
    }
    return batches, per_image
