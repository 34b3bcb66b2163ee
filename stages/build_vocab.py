"""Stage build_vocab: the vocabulary of the train captions."""

from captioner.datasets import read_captions
from captioner.layout import Layout
from captioner.stage import Params, run
from captioner.text import Vocabulary


def main(params: Params) -> None:
    captions = [tokens for _, tokens in read_captions(Layout.split_captions("train"))]
    vocab = Vocabulary.build(captions, **params["vocab"])
    vocab.save(Layout.vocab)
    print(f"build_vocab: {len(vocab)} tokens, captions up to {vocab.max_length} tokens")


if __name__ == "__main__":
    run(main)
