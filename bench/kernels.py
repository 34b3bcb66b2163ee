"""Which CPU kernels give which bits, at what speed: feature extraction and the train step under TensorFlow's own
choice (what the stages run) and other kernel settings, in worker processes taking turns.

    dvc repro            # the bench reads data/ and params.yaml as the pipeline left them
    python bench/kernels.py [--images 256] [--steps 30] [--rounds 3]

Settings: TensorFlow's choice (oneDNN's graph rewrite on by default on AVX-512 VNNI, BF16 or AMX CPUs, else off);
the rewrite off; off with oneDNN's sgemm held to AVX2 code (``ONEDNN_MAX_CPU_ISA=AVX2``); on; on with AVX2 code.
Each worker encodes the same ``--images`` train images (the params' encoder, features.batch_size a batch, decoding
included) and runs ``--steps`` train steps of the params' decoder; prints seconds per round of each, the ratios to
TensorFlow's choice, and digests of each setting's encoder output and of the decoder's weights after three
warm-up steps: compare them with another machine's.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import time

from threads import train_steps

SETTINGS = {
    "TensorFlow's choice": {},
    "rewrite off": {"TF_ENABLE_ONEDNN_OPTS": "0"},
    "rewrite off, AVX2 sgemm": {"TF_ENABLE_ONEDNN_OPTS": "0", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "rewrite on": {"TF_ENABLE_ONEDNN_OPTS": "1"},
    "rewrite on, AVX2 code": {"TF_ENABLE_ONEDNN_OPTS": "1", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}


def worker(images: int, steps: int) -> None:
    import numpy as np

    from captioner import process

    process.prepare()
    from captioner.datasets import read_split_list
    from captioner.features import encoders
    from captioner.features import extraction as features
    from captioner.layout import Layout
    from captioner.stage import declared_params

    params = declared_params("extract_features")
    encoder = encoders.get(params["encoder"])
    model = encoder.build(str(params["features"]["weights"]), params["features"]["image_size"])
    size = params["features"]["image_size"] or encoder.input_size
    paths = [str(Layout().images / name) for name in read_split_list(Layout().split_list("train"))[:images]]
    batch = params["features"]["batch_size"]

    def encode() -> bytes:
        outputs = []
        for start in range(0, len(paths), batch):
            pixels = np.stack([features.load_image(path, size, encoder.preprocess) for path in paths[start:][:batch]])
            outputs.append(np.asarray(model(pixels)))
        return np.concatenate(outputs).tobytes()

    digest = hashlib.sha256(encode()).hexdigest()[:12]  # also the warm-up
    description, train, weights = train_steps(steps)  # three warm-up steps taken
    print(f"ready: {len(paths)} images, {description}; features {digest}, weights {weights()}", flush=True)
    for _ in sys.stdin:
        started = time.perf_counter()
        encode()
        middle = time.perf_counter()
        train()
        print(middle - started, time.perf_counter() - middle, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256, help="train images encoded per worker and round")
    parser.add_argument("--steps", type=int, default=30, help="train steps per worker and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds in which the workers take turns")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker:
        return worker(arguments.images, arguments.steps)
    overridden = {name for environment in SETTINGS.values() for name in environment}
    inherited = {name: value for name, value in os.environ.items() if name not in overridden}
    workers = {}
    for name, environment in SETTINGS.items():
        workers[name] = subprocess.Popen(
            [sys.executable, __file__, "--worker", "--images", str(arguments.images), "--steps", str(arguments.steps)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=inherited | environment,
        )
        print(f"{name}: {workers[name].stdout.readline().strip()}")  # one at a time: warm-up is not timed
    spent = {name: [0.0, 0.0] for name in workers}
    for _ in range(arguments.rounds):
        for name, process in workers.items():
            process.stdin.write("go\n")
            process.stdin.flush()
            encode, train = map(float, process.stdout.readline().split())
            spent[name][0] += encode
            spent[name][1] += train
    for process in workers.values():
        process.stdin.close()
        process.wait()
    reference = spent["TensorFlow's choice"]
    print(f"seconds per round ({arguments.images} images encoded; {arguments.steps} train steps), ratio to the first:")
    for name, (encode, train) in spent.items():
        rounds = arguments.rounds
        encoding = f"encode {encode / rounds:6.2f} s ({encode / reference[0]:.2f})"
        print(f"  {name:>24}: {encoding}   train {train / rounds:6.2f} s ({train / reference[1]:.2f})")


if __name__ == "__main__":
    main()
