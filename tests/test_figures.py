"""Evaluation figures (captioner.figures): real PNGs of the expected layout."""

import numpy as np
from PIL import Image

from captioner import figures


def test_samples_grid_histogram_and_attention_maps_are_pngs(shapes_raw, tmp_path):
    images = sorted((shapes_raw / "Flicker8k_Dataset").iterdir())[:5]
    figures.samples(
        images, ["a red circle"] * 5, [["a red disc", "a big red circle", "unused"]] * 5, tmp_path / "s.png"
    )
    figures.histogram(np.linspace(0.1, 0.9, 50), tmp_path / "h.png", "test embeddings")
    alphas = np.random.default_rng(0).dirichlet(np.ones(49), size=4)
    figures.attention_maps(images[0], ["a", "red", "circle", "here"], alphas, tmp_path / "a.png")
    sizes = {name: Image.open(tmp_path / name).size for name in ("s.png", "h.png", "a.png")}
    assert 800 < sizes["s.png"][0] <= 1100 and sizes["s.png"][1] > sizes["h.png"][1]  # 4 columns, 2 rows of samples
    ink = (np.asarray(Image.open(tmp_path / "s.png").convert("L")) < 250).any(axis=1)
    assert ink[:30].any() and ink[-30:].any()  # no blank band above the first row or below the last
    assert sizes["a.png"][0] > sizes["a.png"][1]  # image + 4 words: one row of 5 panels
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "h.png", "s.png"]  # no temporaries left


def test_the_same_figure_drawn_twice_is_byte_identical(shapes_raw, tmp_path):
    """Tracked in git, the figures must not change when the captions did not."""
    images = sorted((shapes_raw / "Flicker8k_Dataset").iterdir())[:4]
    for name in ("one.png", "two.png"):
        figures.samples(images, ["a red circle"] * 4, [["a red disc"]] * 4, tmp_path / name)
    assert (tmp_path / "one.png").read_bytes() == (tmp_path / "two.png").read_bytes()
