"""Stage evaluate: captions for the test images, the standard caption metrics, figures, a readable captions file."""

import sys

from captioner.layout import Layout
from captioner.stage import Params, run


def main(params: Params, layout: Layout) -> None:
    from captioner import evaluation

    scores, notes = evaluation.evaluate(layout, params["encoder"], params["evaluate"], list(params["ensemble"]))
    for note in notes:
        print(f"evaluate: {note}")
    print(f"evaluate: {', '.join(f'{key} {value}' for key, value in scores.items() if value is not None)}")


if __name__ == "__main__":
    sys.exit(run(main))
