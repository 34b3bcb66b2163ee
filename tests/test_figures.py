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
    assert sizes["s.png"][0] > 1000 and sizes["s.png"][1] > sizes["h.png"][1]  # 4 columns, 2 rows of samples
    assert sizes["a.png"][0] > sizes["a.png"][1]  # image + 4 words: one row of 5 panels
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "h.png", "s.png"]  # no temporaries left
