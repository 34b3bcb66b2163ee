"""The generated default dataset (captioner.datasets.shapes)."""

import hashlib

import numpy as np
import pytest

from captioner import CaptionerError
from captioner.datasets import shapes
from captioner.layout import SPLITS


def _digest(folder):
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def test_same_params_give_identical_files(tmp_path, shapes_raw):
    shapes.generate(tmp_path / "again", num_images=24, image_size=96, dev_fraction=0.25, test_fraction=0.25, seed=3)
    assert _digest(tmp_path / "again") == _digest(shapes_raw)
    shapes.generate(tmp_path / "other", num_images=24, image_size=96, dev_fraction=0.25, test_fraction=0.25, seed=4)
    assert _digest(tmp_path / "other") != _digest(shapes_raw)


def test_release_layout_with_five_distinct_captions_and_disjoint_splits(shapes_raw):
    lines = (shapes_raw / "Flickr8k.token.txt").read_text().splitlines()
    images = sorted(p.name for p in (shapes_raw / "Flicker8k_Dataset").iterdir())
    assert len(images) == 24 and len(lines) == 24 * 5
    for image in images:
        captions = [line.split("\t")[1] for line in lines if line.startswith(image + "#")]
        assert len(set(captions)) == shapes.CAPTIONS_PER_IMAGE
    splits = [set((shapes_raw / f"Flickr_8k.{s}Images.txt").read_text().split()) for s in SPLITS]
    assert [len(s) for s in splits] == [12, 6, 6]
    assert set.union(*splits) == set(images)


def test_vocabulary_of_the_world_is_at_least_what_the_issue_asks():
    assert len(shapes.SHAPES) >= 4 and len(shapes.COLOURS) >= 6 and len(shapes.SIZES) == 2


@pytest.mark.parametrize("seed", range(40))
def test_captions_are_true_to_the_drawn_image(seed):
    rng = np.random.default_rng(seed)
    things = shapes._sample_things(rng)
    image = np.asarray(shapes._draw(things, 128, rng), dtype=float)
    for thing in things:  # the object's own colour sits at its centre
        centre = image[int(thing.y * 128) - 1 : int(thing.y * 128) + 2, int(thing.x * 128) - 1 : int(thing.x * 128) + 2]
        assert np.abs(centre.mean(axis=(0, 1)) - shapes.COLOURS[thing.colour]).max() < 25
    for caption in shapes._captions(things, rng):
        words = caption.split()
        assert sorted(w for w in words if w in shapes.COLOURS) == sorted(t.colour for t in things)
        synonyms = {word: key for key, options in shapes.SYNONYMS.items() for option in options for word in [option]}
        mentioned_sizes = sorted(synonyms[w] for w in words if synonyms.get(w) in shapes.SIZES)
        assert mentioned_sizes == sorted(t.size for t in things)
        mentioned_shapes = sorted(synonyms.get(w, w) for w in words if synonyms.get(w, w) in shapes.SHAPES)
        assert mentioned_shapes == sorted(t.shape for t in things)
        if len(things) == 3:
            assert "from left to right" in caption
            colours_in_order = [w for w in words if w in shapes.COLOURS]
            assert colours_in_order == [t.colour for t in sorted(things, key=lambda t: t.x)]
        if len(things) == 2:
            first_colour = next(w for w in words if w in shapes.COLOURS)
            first = next(t for t in things if t.colour == first_colour)
            second = next(t for t in things if t is not first)
            if first.colour != second.colour:
                relation = shapes._relation(first, second)
                assert any(phrase in caption for phrase in shapes.SYNONYMS[relation])


def test_fractions_that_leave_a_split_without_images_are_named(tmp_path):
    with pytest.raises(CaptionerError, match=r"shapes.dev_fraction 0.01 .* leave the dev split without images"):
        shapes.generate(tmp_path / "raw", num_images=20, image_size=32, dev_fraction=0.01, test_fraction=0.2, seed=1)
    with pytest.raises(CaptionerError, match="leave the train split without images"):
        shapes.generate(tmp_path / "raw", num_images=10, image_size=32, dev_fraction=0.5, test_fraction=0.5, seed=1)
    assert not (tmp_path / "raw").exists()
