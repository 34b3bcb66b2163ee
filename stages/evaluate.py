"""Stage evaluate: captions for the test images, the standard caption metrics, figures, a readable captions file."""

import sys

from captioner.layout import Layout
from captioner.stage import Params, run


def main(params: Params, layout: Layout) -> None:
    from captioner.evaluation.evaluate import evaluate
    from captioner.model.decoding import DecodeSettings

    settings, batch_size = DecodeSettings(**params["evaluate"]), params["speed"]["decode_batch_size"]
    scores, notes = evaluate(layout, params["encoder"], settings, list(params["ensemble"]), batch_size)
    for note in notes:
        print(f"evaluate: {note}")
    print(f"evaluate: {', '.join(f'{key} {value}' for key, value in scores.items() if value is not None)}")


if __name__ == "__main__":
    sys.exit(run(main))
