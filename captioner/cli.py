"""``caption``: caption image files with a trained model, from the command line.

    caption photo.jpg other.png --beam 3 [--length-penalty 0] [--json] [--model-dir models] [--member ensemble/seed2 …]
    caption photo.jpg --export export     # the exported model (the export stage's, or `dvc artifacts get`)

The model directory written by the train stage says which encoder, weights, input size and
pooling the decoder was trained on, so nothing is re-typed. A missing or unreadable file gets one
line on stderr and exit status 1 (an unusable model too); the other images are still captioned.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def positive(value: str) -> int:
    """An argparse type: a whole number ≥ 1."""
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number ≥ 1, not {value!r}")
    return int(value)


def non_negative(value: str) -> float:
    """An argparse type: a number ≥ 0."""
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not number >= 0:  # nan too
        raise argparse.ArgumentTypeError(f"must be a number ≥ 0, not {value!r}")
    return number


def arguments_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="caption", description="Caption images with a trained captioner.")
    parser.add_argument("images", nargs="+", type=Path, help="JPEG or PNG files, any size")
    parser.add_argument(
        "--model-dir", type=Path, default=Path("models"), help="the train stage's output (default: models)"
    )
    parser.add_argument(
        "--member",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="decode as an ensemble with this model directory too (e.g. ensemble/<name>); repeat for more",
    )
    parser.add_argument(
        "--export",
        type=Path,
        metavar="DIR",
        help="caption with the exported model in DIR (the export stage's export/): TensorFlow alone, decoding as it "
        "was exported (evaluate's beam size and length limit, its ensemble)",
    )
    parser.add_argument("--beam", type=positive, help="beam width; 1 is greedy (default: 3)")
    parser.add_argument(
        "--length-penalty",
        type=non_negative,
        help="beams ranked by log-prob ÷ length**this; 1: per token, longer captions (default: 0, as evaluate's)",
    )
    parser.add_argument(
        "--max-len", type=positive, default=None, help="longest caption in tokens (default: the vocabulary's)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per line: image, caption")
    return parser


BAKED_IN = ("beam", "max_len", "length_penalty", "member")  # fixed in an exported model


def main(argv: list[str] | None = None) -> int:
    parser = arguments_parser()
    arguments = parser.parse_args(argv)
    if arguments.export and any(getattr(arguments, name) not in (None, []) for name in BAKED_IN):
        parser.error("--beam, --max-len, --length-penalty and --member are fixed in an exported model (export.json)")

    from captioner import CaptionerError, process

    process.prepare()
    try:
        captions, failures = _captions(arguments)
    except CaptionerError as err:
        print(f"caption: error: {err}", file=sys.stderr)
        return 1
    for path in arguments.images:
        if path in failures:
            print(f"caption: error: {path}: {failures[path]}", file=sys.stderr)
        elif arguments.json:
            print(json.dumps({"image": str(path), "caption": captions[path]}))
        else:
            print(f"{path}: {captions[path]}")
    return 1 if failures else 0


def _captions(arguments: argparse.Namespace) -> tuple[dict[Path, str], dict[Path, str]]:
    """Each image's caption, and why each other image has none."""
    if arguments.export:
        from captioner import export

        captions_and_failures = export.caption_files(arguments.export, arguments.images)
        _note_a_shapes_model(export.read_card(arguments.export).get("dataset"), arguments.export)
        return captions_and_failures
    from captioner.captioning import Captioner

    captioner = Captioner.load(arguments.model_dir, arguments.member)
    _note_a_shapes_model(captioner.trained.card.get("dataset"), arguments.model_dir)
    results = captioner.caption(
        arguments.images,
        beam_size=arguments.beam or 3,
        max_len=arguments.max_len,
        length_penalty=arguments.length_penalty or 0.0,
    )
    captions = {result.image: result.text for result in results if result.error is None}
    return captions, {result.image: result.error for result in results if result.error is not None}


def _note_a_shapes_model(dataset: str | None, folder: Path) -> None:
    if dataset == "shapes":
        print(
            f"caption: note: the model in {folder}/ was trained on generated shapes and describes only coloured "
            "shapes; for photos train on Flickr8k: dvc exp run -S dataset=flickr8k (README: Real Flickr8k)",
            file=sys.stderr,
        )
