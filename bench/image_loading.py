"""Cost of turning images upright by their EXIF orientation, as a ratio measured side by side in one run.

    python bench/image_loading.py            # needs ../shared/flickr8k beside the clone

Decodes and resizes 512 Flickr8k JPEGs through the extraction pipeline's tf.data map, with the
orientation step (``features.load_image``, as the stages run it) and without it (decode → resize
only), taking turns over several rounds; prints images/s of each and their ratio.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import tensorflow as tf
from extract_features import unpack_images  # bench/ is on sys.path when run as a script

from captioner.features import extraction as features


def plain_load(path, size: int, preprocess):
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    return preprocess(tf.image.resize(tf.cast(image, tf.float32), (size, size), antialias=True))


def images_per_second(paths: list[Path], load) -> float:
    dataset = (
        tf.data.Dataset.from_tensor_slices([str(path) for path in paths])
        .map(lambda path: load(path, 224, lambda image: image), num_parallel_calls=tf.data.AUTOTUNE)
        .batch(32)
        .prefetch(tf.data.AUTOTUNE)
    )
    started = time.perf_counter()
    for _ in dataset:
        pass
    return len(paths) / (time.perf_counter() - started)


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        paths = unpack_images(512, Path(folder))
        images_per_second(paths[:64], features.load_image)  # warm up both graphs
        images_per_second(paths[:64], plain_load)
        rounds = {"upright": [], "plain": []}
        for _ in range(4):
            rounds["upright"].append(images_per_second(paths, features.load_image))
            rounds["plain"].append(images_per_second(paths, plain_load))
    best = {name: max(values) for name, values in rounds.items()}
    print(
        f"decode+resize, 512 images, best of 4 rounds taking turns: with EXIF orientation {best['upright']:.0f} img/s, "
        f"without {best['plain']:.0f} img/s; ratio {best['upright'] / best['plain']:.3f}"
    )


if __name__ == "__main__":
    main()
