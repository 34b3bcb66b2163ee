"""Stage train: fit the decoder on the train captions with early stopping on dev; save it under models/ (an
ensemble member, ``--member NAME``: under ensemble/NAME/)."""

import sys

from captioner.layout import Layout
from captioner.stage import Params, run
from captioner.training.config import TrainConfig


def process_for(params: Params) -> dict:
    """The process this run needs (``captioner.process.prepare``), set before TensorFlow starts; its config is
    checked first, so a bad param fails at once."""
    precision = TrainConfig.from_params(params).precision
    return {"threads_per_op": params["speed"]["threads_per_op"], "precision": precision}


def main(params: Params, layout: Layout) -> None:
    from captioner.training.train import train

    train(TrainConfig.from_params(params), layout)


if __name__ == "__main__":
    sys.exit(run(main, process_for))
