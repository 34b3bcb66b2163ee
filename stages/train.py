"""Stage train: fit the decoder on the train captions with early stopping on dev; save it under models/ (an
ensemble member, ``--member NAME``: under ensemble/NAME/)."""

from captioner.config import size_thread_pools

size_thread_pools("train")  # before TensorFlow starts: it sizes its thread pools once

from captioner import training
from captioner.config import TrainConfig
from captioner.stage import Params, run


def main(params: Params) -> None:
    training.run(TrainConfig.from_params(params))


if __name__ == "__main__":
    run(main)
