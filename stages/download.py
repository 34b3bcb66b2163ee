"""Stage download: the dataset in the Flickr8k release layout under data/raw."""

import sys
from pathlib import Path

from captioner.datasets import flickr8k, karpathy, shapes
from captioner.files import atomic_path
from captioner.layout import Layout
from captioner.stage import Params, run


def main(params: Params, layout: Layout) -> None:
    dataset, at = params["dataset"], layout.located  # relative paths in params are the project folder's
    with atomic_path(layout.raw) as raw:
        if dataset == "shapes":
            shapes.generate(raw, **params["shapes"])
        elif dataset == "karpathy":
            places = {key: at(params["karpathy"][key]) for key in ("split_url", "image_urls", "images_dir")}
            for warning in karpathy.install(dict(params["karpathy"]) | places, layout.downloads, raw):
                print(f"download: warning: {warning}")
        elif params["flickr8k"]["kaggle_dir"]:
            flickr8k.install_kaggle(Path(at(params["flickr8k"]["kaggle_dir"])), raw)
        else:
            source = params["flickr8k"]
            images = flickr8k.fetch(at(source["images_url"]), source["images_sha256"], layout.downloads)
            text = flickr8k.fetch(at(source["text_url"]), source["text_sha256"], layout.downloads)
            flickr8k.install_release(images, text, raw)
    print(f"download: {dataset} written to {layout.raw}")


if __name__ == "__main__":
    sys.exit(run(main))
