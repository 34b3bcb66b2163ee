"""Stage extract_features: one pass of the frozen encoder over every listed image, into data/features/<encoder>.h5."""

import sys

from captioner.layout import Layout
from captioner.stage import Params, run


def main(params: Params, layout: Layout) -> None:
    from captioner import process
    from captioner.features import extraction as features

    notice = process.machine_change(layout.machine_record)
    if notice:
        print(notice)
    target, paths, skipped = features.extract_project(layout, params["encoder"], params["features"])
    for name in skipped:
        print(f"extract_features: skipped {name}: not a readable image")
    written, pooling = len(paths) - len(skipped), params["features"]["pooling"]
    print(f"extract_features: {written} images → {target} ({pooling}); {len(skipped)} unreadable skipped")


if __name__ == "__main__":
    sys.exit(run(main))
