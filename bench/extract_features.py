"""Feature extraction speed and memory, as ratios measured side by side in one run.

    python bench/extract_features.py            # needs ../shared/flickr8k beside the clone
    python bench/extract_features.py --lite     # only: Lite0 vs Lite1 vs Lite2, side by side

On 256 Flickr8k images with efficientnet_lite0, pooling grid:
  1. the stage's images/s ÷ bare model.predict images/s on the same images already decoded in memory
  2. the stage's images/s ÷ a per-image load_img → preprocess → predict loop, as the seeds wrote it
  3. peak RSS of the stage for 256 vs 2,048 images (separate processes)
and images/s of vgg16, resnet50 and efficientnetb0 (weights none, default sizes), for planning.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

SHARED_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "flickr8k" / "Flickr8k_Dataset.zip"


def unpack_images(count: int, folder: Path) -> list[Path]:
    with zipfile.ZipFile(SHARED_IMAGES) as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".jpg") and not n.startswith("__MACOSX"))[:count]
        for name in names:
            (folder / Path(name).name).write_bytes(archive.read(name))
    return [folder / Path(name).name for name in names]


def stage_rate(extractor, paths: list[Path], target: Path, batch_size: int = 32) -> float:
    extractor.write(paths[:batch_size], target, batch_size)  # warm-up: trace the forward pass
    started = time.perf_counter()
    extractor.write(paths, target, batch_size)
    return len(paths) / (time.perf_counter() - started)


def in_memory_rates(extractor, paths: list[Path], batch_size: int = 32) -> tuple[float, float]:
    """Images/s of bare ``model.predict`` and of the stage's compiled forward pass, on decoded images."""
    from captioner.features.extraction import _image_dataset

    decoded = np.concatenate(
        [batch.numpy() for _, batch in _image_dataset(paths, extractor.size, extractor.encoder.preprocess, 64)]
    )
    extractor.model.predict(decoded[:batch_size], batch_size=batch_size, verbose=0)
    started = time.perf_counter()
    extractor.model.predict(decoded, batch_size=batch_size, verbose=0)
    predict = len(paths) / (time.perf_counter() - started)
    started = time.perf_counter()
    for begin in range(0, len(decoded), batch_size):
        extractor.forward(decoded[begin : begin + batch_size]).numpy()
    return predict, len(paths) / (time.perf_counter() - started)


def seed_loop_rate(extractor, paths: list[Path]) -> float:
    """The per-image way: one image at a time through keras load_img and model.predict."""
    import keras

    def one(path):
        image = keras.utils.img_to_array(keras.utils.load_img(path, target_size=(extractor.size, extractor.size)))
        return extractor.model.predict(extractor.encoder.preprocess(image[None]), verbose=0)

    one(paths[0])
    started = time.perf_counter()
    for path in paths:
        one(path)
    return len(paths) / (time.perf_counter() - started)


def peak_rss_mib(count: int) -> float:
    """Peak RSS of a separate process that extracts ``count`` images (grid) the stage's way."""
    output = subprocess.run(
        [sys.executable, __file__, "--rss-child", str(count)], capture_output=True, text=True, check=True
    )
    return float(output.stdout.strip().splitlines()[-1])


def rss_child(count: int) -> None:
    from captioner.features import encoders
    from captioner.features.extraction import Extractor

    with tempfile.TemporaryDirectory() as scratch:
        paths = unpack_images(count, Path(scratch))
        Extractor(encoders.get("efficientnet_lite0"), "grid").write(paths, Path(scratch) / "f.h5", 32)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def lite_family(rounds: int = 3) -> None:
    """Stage img/s of Lite0, Lite1 and Lite2 (ImageNet weights, grid, each at its own input size) on the same
    256 images, the three taking turns ``rounds`` times."""
    from captioner.features import encoders
    from captioner.features.efficientnet_lite import VARIANTS
    from captioner.features.extraction import Extractor

    with tempfile.TemporaryDirectory() as scratch:
        paths = unpack_images(256, Path(scratch))
        extractors = {name: Extractor(encoders.get(name), "grid") for name in VARIANTS}
        spent = dict.fromkeys(extractors, 0.0)
        for name, extractor in extractors.items():
            extractor.write(paths[:32], Path(scratch) / f"{name}.h5", 32)  # warm-up: trace the forward pass
        for _ in range(rounds):
            for name, extractor in extractors.items():
                started = time.perf_counter()
                extractor.write(paths, Path(scratch) / f"{name}.h5", 32)
                spent[name] += time.perf_counter() - started
    rates = {name: rounds * len(paths) / seconds for name, seconds in spent.items()}
    for name, rate in rates.items():
        size = VARIANTS[name].input_size
        print(f"{name} ({size} px, grid): {rate:.1f} img/s, {rate / rates['efficientnet_lite0']:.2f}x Lite0's")


def main() -> None:
    from captioner.features import encoders
    from captioner.features.extraction import Extractor

    with tempfile.TemporaryDirectory() as scratch:
        paths = unpack_images(256, Path(scratch))
        target = Path(scratch) / "features.h5"
        lite0 = Extractor(encoders.get("efficientnet_lite0"), "grid")
        stage = stage_rate(lite0, paths, target)
        bare, forward = in_memory_rates(lite0, paths)
        seeds = seed_loop_rate(lite0, paths[:64])
        print(f"efficientnet_lite0 grid, 256 images: stage {stage:.1f} img/s, bare predict {bare:.1f} img/s,")
        print(f"  compiled forward on decoded images {forward:.1f} img/s, per-image loop {seeds:.1f} img/s")
        print(f"  stage / bare predict = {stage / bare:.2f}   (goal >= 0.85)")
        print(f"  stage / compiled forward in memory = {stage / forward:.2f}   (the stage's own ceiling)")
        print(f"  stage / per-image loop  = {stage / seeds:.1f}x  (goal >= 3x)")
        for name in ("vgg16", "resnet50", "efficientnetb0"):
            encoder = encoders.get(name)
            rate = stage_rate(Extractor(encoder, "avg", weights="none"), paths[:96], target)
            print(f"{name} (weights none, {encoder.input_size}px): {rate:.1f} img/s")
    small, large = peak_rss_mib(256), peak_rss_mib(2048)
    print(f"peak RSS: 256 images {small:.0f} MiB, 2048 images {large:.0f} MiB, ratio {large / small:.2f} (goal ~1)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lite", action="store_true", help="only the Lite family's speeds, side by side")
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.rss_child:
        rss_child(arguments.rss_child)
    else:
        lite_family() if arguments.lite else main()
