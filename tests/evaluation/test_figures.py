"""Evaluation figures (captioner.evaluation.figures): real PNGs of the expected layout."""

import numpy as np
from PIL import Image

from captioner.evaluation import figures


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


def test_long_captions_stay_clear_of_the_next_rows_images(shapes_raw, tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda figure, path, dpi=110: drawn.append(figure))
    images = sorted((shapes_raw / "Flicker8k_Dataset").iterdir())[:8]
    long = " ".join(["three shapes from left to right a yellow square that is little"] * 3)
    figures.samples(images, [long] * 8, [[long, long, long]] * 8, tmp_path / "s.png")
    (figure,) = drawn
    renderer = figure.canvas.get_renderer()
    figure.draw(renderer)
    axes = [axis for axis in figure.axes if axis.images]
    for above, below in zip(axes[:4], axes[4:], strict=True):  # each of the first row over the one beneath it
        label = above.xaxis.label
        assert len(label.get_text().splitlines()) <= 8
        assert label.get_window_extent(renderer).y0 > below.get_window_extent(renderer).y1
