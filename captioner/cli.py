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
import sys
from collections.abc import Iterator
from pathlib import Path


def like_param(name: str):
    """An argparse type: a number read as the param ``name`` (e.g. ``evaluate.beam_size``) and held to its rule, so a
    flag accepts what the param does (no infinite length penalty, no beam of a million)."""
    from captioner.params import RULES

    rule = RULES[name]

    def parse(value: str):
        try:
            number = int(value) if rule.kind == "integer" else float(value)
        except ValueError:
            number = None
        if number is None or not rule.accepts(number):
            raise argparse.ArgumentTypeError(f"must be {rule.allowed()} (as {name}), not {value!r}")
        return number

    return parse


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
    parser.add_argument("--beam", type=like_param("evaluate.beam_size"), help="beam width; 1 is greedy (default: 3)")
    parser.add_argument(
        "--length-penalty",
        type=like_param("evaluate.length_penalty"),
        help="beams ranked by log-prob ÷ length**this; 1: per token, longer captions (default: 0, as evaluate's)",
    )
    parser.add_argument(
        "--max-len",
        type=like_param("evaluate.max_len"),
        default=None,
        help="longest caption in tokens (default: the vocabulary's)",
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
    failed = False
    try:
        for path, caption, error in _captions(arguments):
            failed = failed or error is not None
            if error is not None:
                print(f"caption: error: {path}: {error}", file=sys.stderr)
            elif arguments.json:
                print(json.dumps({"image": str(path), "caption": caption}), flush=True)
            else:
                print(f"{path}: {caption}", flush=True)
    except CaptionerError as err:
        print(f"caption: error: {err}", file=sys.stderr)
        return 1
    return 1 if failed else 0


def _captions(arguments: argparse.Namespace) -> Iterator[tuple[Path, str, str | None]]:
    """``(image, caption, why it has none or None)`` of each image in order, as they are ready."""
    if arguments.export:
        from captioner import export

        _note_a_shapes_model(export.read_card(arguments.export).get("dataset"), arguments.export)
        yield from export.caption_files(arguments.export, arguments.images)
        return
    from captioner.captioning import Captioner

    captioner = Captioner.load(arguments.model_dir, arguments.member)
    _note_a_shapes_model(captioner.trained.card.get("dataset"), arguments.model_dir)
    decoding = {"beam_size": arguments.beam or 3, "max_len": arguments.max_len}
    for result in captioner.captions(arguments.images, **decoding, length_penalty=arguments.length_penalty or 0.0):
        yield result.image, result.text, result.error


def _note_a_shapes_model(dataset: str | None, folder: Path) -> None:
    if dataset == "shapes":
        print(
            f"caption: note: the model in {folder}/ was trained on generated shapes and describes only coloured "
            "shapes; for photos train on Flickr8k: dvc exp run -S dataset=flickr8k (README: Real Flickr8k)",
            file=sys.stderr,
        )
