"""Stage evaluate: captions for the test images, the standard caption metrics, figures, a readable captions file."""

import json

from captioner import encoders, ensemble, evaluation
from captioner.captioning import Trained
from captioner.datasets import read_captions
from captioner.features import FeatureFile
from captioner.stage import CaptionerError, Layout, Params, run, write_text
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
        members = ensemble.load_members(trained, [ensemble.FOLDER / name for name in params["ensemble"]])[1:]
        encoder = encoders.get(params["encoder"])
        result = evaluation.caption_test_images(trained, cached, encoder, Layout.images, test, vocab, settings, members)
    train = read_captions(Layout.split_captions("train"))
    scores, cosines, notes = evaluation.scores(result, trained, vocab, train, settings, 1 + len(members))
    write_text(Layout.scores, json.dumps(scores, indent=2) + "\n")
    write_text(Layout.test_captions, evaluation.captions_table(result))
    evaluation.draw(result, cosines, Layout.images, Layout.figures)
    for note in notes:
        print(f"evaluate: {note}")
    print(f"evaluate: {', '.join(f'{key} {value}' for key, value in scores.items() if value is not None)}")


if __name__ == "__main__":
    run(main)
