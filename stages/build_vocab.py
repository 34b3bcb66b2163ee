"""Stage build_vocab: the vocabulary of the train captions."""

import sys

from captioner.datasets import read_captions
from captioner.layout import Layout
from captioner.stage import Params, run
from captioner.text import Vocabulary


def main(params: Params, layout: Layout) -> None:
    captions = [tokens for _, tokens in read_captions(layout.split_captions("train"))]
    vocab = Vocabulary.build(captions, **params["vocab"])
    vocab.save(layout.vocab)
    print(f"build_vocab: {len(vocab)} tokens, captions up to {vocab.max_length} tokens")


if __name__ == "__main__":
    sys.exit(run(main))
