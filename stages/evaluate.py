"""Stage evaluate: captions for the test images, the standard caption metrics, figures, a readable captions file."""

import json

from captioner import CaptionerError, encoders, ensemble, evaluation
from captioner.checkpoint import Trained
from captioner.datasets import read_captions
from captioner.features import FeatureFile
from captioner.files import write_text
from captioner.layout import Layout
from captioner.stage import Params, run
from captioner.text import Vocabulary


def main(params: Params) -> None:
    settings = params["evaluate"]
    vocab = Vocabulary.load(Layout.vocab)
    test = read_captions(Layout.split_captions("test"))
    with FeatureFile(Layout.features_file(params["encoder"]), params["encoder"]) as cached:
        if not any(image in cached.row_of for image, _ in test):
            raise CaptionerError(f"no test image has both captions and features in {cached.path}; nothing to score")
        trained = Trained.load(Layout.models)
        trained.require_vocabulary(vocab, Layout.vocab)
        members = ensemble.members(trained, [Layout.ensemble / name for name in params["ensemble"]])
        encoder = encoders.get(params["encoder"])
        result = evaluation.caption_test_images(members, cached, encoder, Layout.images, test, vocab, settings)
    train = read_captions(Layout.split_captions("train"))
    scores, cosines, notes = evaluation.scores(result, trained, vocab, train, settings, len(members))
    write_text(Layout.scores, json.dumps(scores, indent=2) + "\n")
    write_text(Layout.test_captions, evaluation.captions_table(result))
    evaluation.draw(result, cosines, Layout.images, Layout.figures)
    for note in notes:
        print(f"evaluate: {note}")
    print(f"evaluate: {', '.join(f'{key} {value}' for key, value in scores.items() if value is not None)}")


if __name__ == "__main__":
    run(main)
