"""A synthetic captioning set in the spirit of ShapeWorld, written in the Flickr8k release layout.

Each image holds 1–3 non-overlapping objects (shape × colour × size) on a noisy gradient
background; its five distinct captions come from templates with synonyms and varied word order,
and every one is true to the image: colours, shapes, sizes, count and relative positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from captioner import CaptionerError
from captioner.files import progress
from captioner.layout import SPLITS, Release

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 170),
    "orange": (250, 140, 20),
}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = ("small", "large")
SYNONYMS = {
    "small": ("small", "little", "tiny"),
    "large": ("large", "big"),
    "circle": ("circle", "disc"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "diamond": ("diamond", "rhombus"),
    "left": ("to the left of", "left of"),
    "right": ("to the right of", "right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
COUNT_WORDS = {2: "two", 3: "three"}
CAPTIONS_PER_IMAGE = 5
_RADIUS = {"small": 0.11, "large": 0.2}  # fraction of the image side


@dataclass(frozen=True)
class Thing:
    shape: str
    colour: str
    size: str
    x: float  # centre, as a fraction of the image side
    y: float


def _sample_things(rng: np.random.Generator) -> list[Thing]:
    """1–3 objects whose bounding circles do not touch, so every one is visible."""
    count = int(rng.integers(1, 4))
    while True:
        things = []
        for _ in range(count):
            size = SIZES[rng.integers(len(SIZES))]
            margin = _RADIUS[size] + 0.02
            things.append(
                Thing(
                    shape=SHAPES[rng.integers(len(SHAPES))],
                    colour=list(COLOURS)[rng.integers(len(COLOURS))],
                    size=size,
                    x=float(rng.uniform(margin, 1 - margin)),
                    y=float(rng.uniform(margin, 1 - margin)),
                )
            )
        if all(
            np.hypot(a.x - b.x, a.y - b.y) > _RADIUS[a.size] + _RADIUS[b.size] + 0.03
            for i, a in enumerate(things)
            for b in things[i + 1 :]
        ):
            return things


def _draw(things: list[Thing], side: int, rng: np.random.Generator) -> Image.Image:
    top, bottom = rng.integers(60, 200, size=(2, 3))  # muted, so no background reads as an object colour
    ramp = np.linspace(0.0, 1.0, side)[:, None, None]
    background = (top * (1 - ramp) + bottom * ramp) * np.ones((1, side, 1))
    image = Image.fromarray(background.astype(np.uint8))
    pen = ImageDraw.Draw(image)
    for thing in things:
        cx, cy, r = thing.x * side, thing.y * side, _RADIUS[thing.size] * side
        fill = COLOURS[thing.colour]
        if thing.shape == "circle":
            pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif thing.shape == "square":
            half = r * 0.8
            pen.rectangle([cx - half, cy - half, cx + half, cy + half], fill=fill)
        elif thing.shape == "triangle":
            pen.polygon([(cx, cy - r), (cx - r * 0.95, cy + r * 0.75), (cx + r * 0.95, cy + r * 0.75)], fill=fill)
        else:
            pen.polygon([(cx, cy - r), (cx + r * 0.75, cy), (cx, cy + r), (cx - r * 0.75, cy)], fill=fill)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0.0, 8.0, size=(side, side, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _relation(a: Thing, b: Thing) -> str:
    """Where ``a`` is relative to ``b``, along the axis on which they are further apart."""
    dx, dy = a.x - b.x, a.y - b.y
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "above" if dy < 0 else "below"


def _captions(things: list[Thing], rng: np.random.Generator) -> list[str]:
    def pick(word: str) -> str:
        options = SYNONYMS.get(word, (word,))
        return options[rng.integers(len(options))]

    def phrase(thing: Thing) -> str:
        if rng.random() < 0.5:
            described = f"{pick(thing.size)} {thing.colour} {pick(thing.shape)}"
        else:
            described = f"{thing.colour} {pick(thing.shape)} that is {pick(thing.size)}"
        return ("an " if described[0] in "aeiou" else "a ") + described

    def one_caption() -> str:
        if len(things) == 1:
            templates = ("{0}", "there is {0}", "{0} on a plain background", "a picture of {0}")
            return templates[rng.integers(len(templates))].format(phrase(things[0]))
        if len(things) == 2:
            a, b = things if rng.random() < 0.5 else things[::-1]
            described = f"{phrase(a)} {pick(_relation(a, b))} {phrase(b)}"
            if rng.random() < 0.3:
                return f"two shapes {described}"
            return described if rng.random() < 0.5 else f"there is {described}"
        ordered = sorted(things, key=lambda thing: thing.x)
        listing = f"{phrase(ordered[0])} {phrase(ordered[1])} and {phrase(ordered[2])}"
        templates = (
            "three shapes from left to right {0}",
            "from left to right {0}",
            "three objects {0} from left to right",
        )
        return templates[rng.integers(len(templates))].format(listing)

    captions: list[str] = []
    for _ in range(200):  # a single small object has few variants; stop looking after a while
        candidate = one_caption()
        if candidate not in captions:
            captions.append(candidate)
        if len(captions) == CAPTIONS_PER_IMAGE:
            return captions
    return (captions * CAPTIONS_PER_IMAGE)[:CAPTIONS_PER_IMAGE]


def generate(
    target: Path, num_images: int, image_size: int, dev_fraction: float, test_fraction: float, seed: int
) -> None:
    """Write ``num_images`` images, their captions and three split lists under ``target``; fractions that leave a
    split without an image are a CaptionerError naming them, before anything is drawn."""
    num_dev, num_test = round(num_images * dev_fraction), round(num_images * test_fraction)
    sizes = {"dev": num_dev, "test": num_test, "train": num_images - num_dev - num_test}
    empty = [split for split, size in sizes.items() if size < 1]
    if empty:
        raise CaptionerError(
            f"shapes.dev_fraction {dev_fraction} and shapes.test_fraction {test_fraction} of shapes.num_images "
            f"{num_images} leave the {' and '.join(empty)} split without images ({sizes}); every split needs one"
        )
    rng = np.random.default_rng(seed)
    image_dir = target / Release.images
    image_dir.mkdir(parents=True)
    names = [f"shapes_{index:06d}.jpg" for index in range(num_images)]
    lines = []
    for name in progress(names, desc="download: drawing shapes", unit="image"):
        things = _sample_things(rng)
        _draw(things, image_size, rng).save(image_dir / name, quality=92)
        lines += [f"{name}#{number}\t{caption}\n" for number, caption in enumerate(_captions(things, rng))]
    (target / Release.captions_file).write_text("".join(lines))
    order = rng.permutation(num_images)
    split_indices = {
        "dev": order[:num_dev],
        "test": order[num_dev : num_dev + num_test],
        "train": order[num_dev + num_test :],
    }
    for split in SPLITS:
        listed = "".join(f"{names[index]}\n" for index in sorted(split_indices[split]))
        (target / Release.split_list(split)).write_text(listed)
