"""Stage extract_features: one pass of the frozen encoder over every listed image, into data/features/<encoder>.h5."""

from captioner import encoders, features
from captioner.datasets import read_split_list
from captioner.layout import SPLITS, Layout
from captioner.stage import Params, run


def main(params: Params) -> None:
    encoder = encoders.get(params["encoder"])
    pooling = params["features"]["pooling"]
    names = sorted({name for split in SPLITS for name in read_split_list(Layout.split_list(split))})
    paths = [Layout.images / name for name in names if (Layout.images / name).is_file()]
    target = Layout.features_file(encoder.name)
    settings = params["features"]
    skipped = features.extract(
        encoder, paths, target, pooling, settings["batch_size"], str(settings["weights"]), settings["image_size"]
    )
    for name in skipped:
        print(f"extract_features: skipped {name}: not a readable image")
    written = len(paths) - len(skipped)
    print(f"extract_features: {written} images → {target} ({pooling}); {len(skipped)} unreadable skipped")


if __name__ == "__main__":
    run(main)
