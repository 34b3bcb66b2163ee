"""Stage export: the trained captioner (with its ensemble members) as a SavedModel and a TensorFlow Lite file under
export/, which caption images with TensorFlow alone; their sizes into metrics/export.json."""

import sys

from captioner.layout import Layout
from captioner.stage import Params, run


def main(params: Params, layout: Layout) -> None:
    from captioner import export
    from captioner.model.decoding import DecodeSettings

    sizes = export.export_project(layout, DecodeSettings(**params["evaluate"]), list(params["ensemble"]))
    print(f"export: {layout.export}/: SavedModel {sizes['saved_model_mb']} MB, TensorFlow Lite {sizes['tflite_mb']} MB")


if __name__ == "__main__":
    sys.exit(run(main))
