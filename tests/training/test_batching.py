"""Caption batches (captioner.training.batching): encoding, length buckets, per-batch padding, image grouping."""

import numpy as np

from captioner.text import Vocabulary, wrap
from captioner.training import batching


def test_batches_group_similar_lengths_pad_each_batch_to_its_own_longest_and_remix_repeatably():
    table = np.arange(8, dtype=np.float32).reshape(4, 2)
    sequences = [[1, 5, 2], [1, 5, 6, 7, 2], [1, 2], [1, 5, 2]]
    unshuffled = batching.CaptionBatches(table.__getitem__, (2,), np.arange(4), sequences, batch_size=2)
    ordered = list(unshuffled)
    assert len(unshuffled) == len(ordered) == 2
    assert [tokens.shape[1] for _, tokens in ordered] == [3, 5]  # sorted by length: [2, 0] then [3, 1]
    np.testing.assert_array_equal(ordered[0][0], table[[2, 0]])
    np.testing.assert_array_equal(ordered[0][1][0], [1, 2, 0])
    np.testing.assert_array_equal(ordered[1][1][0], [1, 5, 2, 0, 0])

    def epochs(seed):
        dataset = batching.CaptionBatches(table.__getitem__, (2,), np.arange(4), sequences, batch_size=2, seed=seed)
        return [[row for features, _ in dataset for row in features[:, 0].tolist()] for _ in range(4)]

    assert epochs(5) == epochs(5)
    assert len({tuple(order) for order in epochs(5)}) > 1  # a new mix each epoch
    assert all(sorted(order) == [0, 2, 4, 6] for order in epochs(5))  # every caption once per epoch


def test_length_buckets_cut_padding_and_cover_every_caption_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 30, size=5000)
    buckets = batching.length_buckets(lengths, 64, np.random.default_rng(1))
    assert sorted(np.concatenate(buckets).tolist()) == list(range(5000))
    padded_steps = sum(len(batch) * lengths[batch].max() for batch in buckets)
    random_batches = np.array_split(rng.permutation(5000), len(buckets))
    assert padded_steps < 0.75 * sum(len(batch) * lengths[batch].max() for batch in random_batches)
    assert batching.length_buckets(lengths, 64, np.random.default_rng(1))[0].tolist() == buckets[0].tolist()


def test_image_caption_batches_hold_all_captions_of_each_image_with_its_features():
    captions = [[[1, 4, 2], [1, 4, 5, 6, 2]], [[1, 5, 2]], [[1, 6, 6, 2]]]
    features = np.arange(3.0)[:, None] * np.ones((3, 2))
    rows = np.array([2, 0, 1])  # image i's features are at rows[i]
    batches = batching.ImageCaptionBatches(features.__getitem__, (2,), rows, captions, per_image=2, batch_size=2)
    assert len(batches) == 2
    (first_features, first_tokens), (last_features, last_tokens) = list(batches)
    # Images of similar longest caption together (1 and 2, then 0); rows of all padding fill up to per_image.
    assert first_features[:, 0].tolist() == [0.0, 1.0] and last_features[:, 0].tolist() == [2.0]
    assert first_tokens.tolist() == [[1, 5, 2, 0], [0, 0, 0, 0], [1, 6, 6, 2], [0, 0, 0, 0]]
    assert last_tokens.tolist() == [[1, 4, 2, 0, 0], [1, 4, 5, 6, 2]]

    shuffled = batching.ImageCaptionBatches(features.__getitem__, (2,), rows, captions, 2, batch_size=2, seed=0)
    seen = []
    for feature_batch, token_batch in shuffled:
        for value, group in zip(feature_batch[:, 0], token_batch.reshape(len(feature_batch), 2, -1), strict=True):
            image = rows.tolist().index(int(value))
            assert [[token for token in row if token] for row in group.tolist() if any(row)] == captions[image]
            seen.append(image)
    assert sorted(seen) == [0, 1, 2]


def test_encode_captions_drops_too_long_and_featureless_captions():
    vocab = Vocabulary(["a", "b"], max_length=4)
    captions = [("x.jpg", wrap(["a", "b"])), ("x.jpg", wrap(["a", "b", "a"])), ("gone.jpg", wrap(["a"]))]
    rows, sequences, dropped = batching.encode_captions(captions, {"x.jpg": 7}, vocab)
    assert rows.tolist() == [7] and sequences == [[1, 4, 5, 2]] and dropped == 2
