"""Figures of the evaluate stage: sample captions, the cosine-similarity histogram, attention maps."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from captioner.files import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: stages run without a display
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path, dpi: int = 110) -> None:
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=dpi, bbox_inches="tight", format="png")
    _pyplot().close(figure)


def _image(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))  # upright, as the encoder saw it


def samples(
    images: list[Path], generated: list[str], references: list[list[str]], path: Path, columns: int = 4
) -> None:
    """A grid of test images, each with its generated caption and two references beneath (about 1000 px wide,
    so `dvc plots diff` can put two experiments' side by side)."""
    plt = _pyplot()
    rows = -(-len(images) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.5 * columns, 3.5 * rows), squeeze=False, layout="constrained")
    figure.get_layout_engine().set(h_pad=0.12)  # inches between a row's captions and the next row's images
    for axis in axes.flat:
        axis.set_axis_off()
    for axis, image, caption, refs in zip(axes.flat, images, generated, references, strict=False):
        axis.set_axis_on()  # for the label beneath; no ticks, no frame
        axis.set_xticks([]), axis.set_yticks([])
        for spine in axis.spines.values():
            spine.set_visible(False)
        axis.imshow(_image(image))
        # The image's name and at most 7 lines beneath it, so a long caption never runs into the next row.
        lines = [image.name, textwrap.fill(f"ours: {caption}", 38, max_lines=3, placeholder=" …")]
        lines += [textwrap.fill(f"ref: {ref}", 38, max_lines=2, placeholder=" …") for ref in refs[:2]]
        axis.set_xlabel("\n".join(lines), fontsize=7, loc="left")
    _save(figure, path, dpi=100)


def histogram(values: np.ndarray, path: Path, what: str) -> None:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 3.6))
    axis.hist(values, bins=30, range=(min(0.0, float(values.min())), 1.0), color="#3b75af")
    axis.axvline(float(values.mean()), color="#c44e52", label=f"mean {values.mean():.3f}")
    axis.set_xlabel(f"cosine similarity, generated vs references ({what})")
    axis.set_ylabel("test images")
    axis.legend()
    _save(figure, path)


def attention_maps(image: Path, words: list[str], alphas: np.ndarray, path: Path) -> None:
    """One panel per generated word: the image with that step's attention over the grid laid on it."""
    from PIL import Image

    plt = _pyplot()
    picture = _image(image)
    side = int(round(np.sqrt(alphas.shape[-1])))
    columns = min(6, len(words) + 1)
    rows = -(-(len(words) + 1) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.6 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    axes.flat[0].imshow(picture)
    axes.flat[0].set_title(image.name, fontsize=7)
    for axis, word, alpha in zip(axes.flat[1:], words, alphas, strict=False):
        weights = Image.fromarray((alpha.reshape(side, side) / alpha.max() * 255).astype(np.uint8))
        weights = np.asarray(weights.resize(picture.shape[1::-1], Image.BILINEAR)) / 255.0
        axis.imshow(picture)
        axis.imshow(weights, cmap="gray", alpha=0.65)
        axis.set_title(word, fontsize=10)
    _save(figure, path)
