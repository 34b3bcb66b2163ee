"""Stage export: the trained captioner (with its ensemble members) as a SavedModel and a TensorFlow Lite file under
export/, which caption images with TensorFlow alone; their sizes into metrics/export.json."""

import json

from captioner import export
from captioner.captioning import Captioner
from captioner.files import write_text
from captioner.layout import Layout
from captioner.stage import Params, run


def main(params: Params) -> None:
    settings = params["evaluate"]
    captioner = Captioner.load(Layout.models, [Layout.ensemble / name for name in params["ensemble"]])
    decoding = {key: settings[key] for key in ("beam_size", "max_len", "length_penalty")}
    card = export.export(captioner, Layout.export, **decoding)
    # To 0.1 MB: the TensorFlow Lite file's exact size moves by bytes from run to run (export/export.json has it).
    sizes = {f"{name}_mb": round(card[f"{name}_bytes"] / 2**20, 1) for name in ("saved_model", "tflite")}
    write_text(Layout.export_sizes, json.dumps(sizes, indent=2) + "\n")
    print(f"export: {Layout.export}/: SavedModel {sizes['saved_model_mb']} MB, TensorFlow Lite {sizes['tflite_mb']} MB")


if __name__ == "__main__":
    run(main)
