"""The export stage (captioner.export): the shipped model captions images with TensorFlow alone, as `caption` does."""

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from captioner import cli, export
from captioner.captioning import Captioner
from tests.conftest import animated_gif, run_stages

# Run by a fresh interpreter outside the repository, ``captioner`` made unimportable: the model must not need it.
# Each job: [kind, model, paths]; the answer: one result per job.
STAND_ALONE = """
import json, sys
sys.modules["captioner"] = None
import numpy as np
import tensorflow as tf

def saved_model(model, paths):
    serve = tf.saved_model.load(model).signatures["serving_default"]
    outputs = serve(images=tf.constant([open(path, "rb").read() for path in paths], tf.string))
    result = {key: value.numpy().tolist() for key, value in outputs.items()}
    result["captions"] = [caption.decode() for caption in result["captions"]]
    result["errors"] = [error.decode() for error in result["errors"]]
    return result

def tflite(model, paths):
    from ai_edge_litert.interpreter import Interpreter  # TensorFlow Lite's runtime, as the README's snippet

    caption = Interpreter(model_path=model).get_signature_runner()  # its one signature
    decoded = [tf.io.decode_image(open(path, "rb").read(), channels=3, expand_animations=False) for path in paths]
    pixels = [image.numpy() for image in decoded]
    def words(outputs):
        return [" ".join(word.decode() for word in row if word) for row in outputs["words"]]
    alone = [caption(pixels=image[None]) for image in pixels]  # one at a time, then all at once (one size)
    result = {"captions": [words(outputs)[0] for outputs in alone]}
    result["log_probs"] = [float(outputs["log_probs"][0]) for outputs in alone]
    result["batched"] = words(caption(pixels=np.stack(pixels)))
    refused = [caption(pixels=np.zeros(shape, np.uint8)) for shape in ([1, 8, 8, 4], [1, 8, 8, 1], [1, 0, 0, 3])]
    result["refused"] = [[error.decode() for error in outputs["errors"]] + words(outputs) for outputs in refused]
    result["errors"] = [outputs["errors"][0].decode() for outputs in alone]
    return result

jobs = json.loads(sys.argv[1])
print(json.dumps([globals()[kind](model, paths) for kind, model, paths in jobs]))
"""


def stand_alone(jobs: list[tuple[str, Path, list[Path]]], cwd: Path, onednn: str) -> list[dict]:
    """The results of ``jobs`` ((saved_model | tflite, model, images) each) in one fresh TensorFlow process, its
    oneDNN graph rewrite on (``onednn`` "1": TensorFlow's default on AVX-512 VNNI, BF16 or AMX CPUs) or off ("0")."""
    jobs = [(kind, str(model), [str(path) for path in paths]) for kind, model, paths in jobs]
    command = [sys.executable, "-I", "-c", STAND_ALONE, json.dumps(jobs)]
    plain = {name: value for name, value in os.environ.items() if not name.startswith(("TF_", "ONEDNN_", "CAPTIONER_"))}
    result = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, env=plain | {"TF_ENABLE_ONEDNN_OPTS": onednn}
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.splitlines()[-1])


def repository_captions(project: Path, paths: list[Path]) -> list[str]:
    """What ``caption`` prints for ``paths`` with the project's model, decoding as evaluate does."""
    settings = yaml.safe_load((project / "params.yaml").read_text())["evaluate"]
    captioner = Captioner.load(project / "models")
    results = captioner.caption(paths, beam_size=settings["beam_size"], max_len=settings["max_len"])
    assert not any(result.error for result in results)
    return [result.text for result in results]


def exif_photos(image: Path, folder: Path) -> list[Path]:
    """``image`` upright, stored sideways with EXIF orientation 6 (which turns it back), and sideways untagged, as
    PNG: lossless, so the tagged photo's pixels are the upright one's once turned."""
    from PIL import Image

    upright = np.asarray(Image.open(image).convert("RGB"))
    stored = np.rot90(upright, 1).copy()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(upright).save(folder / "upright.png")
    Image.fromarray(stored).save(folder / "tagged.png", exif=exif)
    Image.fromarray(stored).save(folder / "untagged.png")
    return [folder / name for name in ("upright.png", "tagged.png", "untagged.png")]


@pytest.fixture(scope="module")
def exported(tiny_trained, tmp_path_factory):
    """A copy of the tiny project exported by the export stage (in this process), five of its test images, and
    what fresh TensorFlow processes without ``captioner`` made of them: the SavedModel on a batch with bad items,
    on bad items alone and on no image under either kernels, on a photo turned by its EXIF tag, and the TensorFlow
    Lite file."""
    project = tmp_path_factory.mktemp("exported") / "project"
    shutil.copytree(tiny_trained, project, symlinks=True)
    run_stages(project, "export")
    images = sorted((project / "data" / "raw" / "Flicker8k_Dataset").iterdir())
    test = {line.split("\t")[0] for line in (project / "data" / "captions" / "test.tsv").read_text().splitlines()}
    images = [path for path in images if path.name in test][:5]
    outside = tmp_path_factory.mktemp("stand-alone")
    (outside / "truncated.jpg").write_bytes(images[0].read_bytes()[:300])
    (outside / "notes.txt").write_text("not an image")
    (outside / "empty.png").write_bytes(b"")
    batch = [images[0], outside / "truncated.jpg", images[1], outside / "notes.txt", outside / "empty.png", *images[2:]]
    saved_model, tflite_file = project / "export" / export.SAVED_MODEL, project / "export" / export.TFLITE_FILE
    bad, nothing = ("saved_model", saved_model, batch[3:5]), ("saved_model", saved_model, [])
    jobs = {
        "batch": ("saved_model", saved_model, batch),
        "bad": bad,
        "nothing": nothing,
        "exif": ("saved_model", saved_model, exif_photos(images[0], outside)),
        "saved_model": ("saved_model", saved_model, images),
        "tflite": ("tflite", tflite_file, images),
    }
    results = dict(zip(jobs, stand_alone(list(jobs.values()), outside, onednn="0"), strict=True))
    results["bad, rewrite on"], results["nothing, rewrite on"] = stand_alone([bad, nothing], outside, onednn="1")
    return project, images, results


@pytest.mark.e2e
def test_a_fresh_tensorflow_process_captions_as_the_caption_command_and_reports_bad_items(exported):
    project, images, results = exported
    result = results["batch"]
    good = [0, 2, 5, 6, 7]
    assert [result["captions"][i] for i in good] == repository_captions(project, images)
    assert all(result["captions"][i] for i in good) and not any(result["errors"][i] for i in good)
    assert [result["errors"][i] for i in (1, 3, 4)] == [export.UNDECODABLE, export.NOT_AN_IMAGE, "empty input"]
    assert [result["captions"][i] for i in (1, 3, 4)] == ["", "", ""]
    assert all(value < 0 for value in np.array(result["log_probs"])[good])
    # No image that decodes, or none at all: still an answer per item, whichever kernels TensorFlow picked.
    for kernels in ("", ", rewrite on"):
        assert results[f"bad{kernels}"]["errors"] == [export.NOT_AN_IMAGE, "empty input"]
        assert results[f"bad{kernels}"]["captions"] == ["", ""]
        assert results[f"nothing{kernels}"] == {"captions": [], "errors": [], "log_probs": []}


@pytest.mark.e2e
def test_the_tflite_file_captions_the_same_pixels_with_the_same_words(exported):
    """The test images (64 px) are enlarged to the encoder's input, where TensorFlow Lite's resize (no antialiasing)
    gives the same pixels: the same captions, one image at a time or all at once; log-probabilities agree to float
    tolerance (other kernels)."""
    project, _, results = exported
    saved, lite = results["saved_model"], results["tflite"]
    assert lite["captions"] == lite["batched"] == saved["captions"]
    assert all(saved["captions"])
    np.testing.assert_allclose(lite["log_probs"], saved["log_probs"], rtol=1e-3, atol=1e-3)
    assert lite["errors"] == [""] * len(lite["captions"])
    # Pixels of another shape (RGBA, one channel, 0×0): refused, each with the one reason, and no caption.
    assert lite["refused"] == [[export.BAD_PIXELS, ""]] * 3
    card = json.loads((project / "export" / export.EXPORT_CARD).read_text())
    assert card["tflite_bytes"] == (project / "export" / export.TFLITE_FILE).stat().st_size > 1_000_000  # weights in
    sizes = json.loads((project / "metrics" / "export.json").read_text())
    assert sizes["tflite_mb"] == round(card["tflite_bytes"] / 2**20, 1)


@pytest.mark.e2e
def test_the_exported_model_turns_a_photo_upright_by_its_exif_orientation(exported):
    """A photo stored sideways with EXIF orientation 6 gets exactly the caption and log-probability of the upright
    photo; without the tag, the model sees another picture."""
    result = exported[2]["exif"]
    assert result["captions"][1] == result["captions"][0] and result["log_probs"][1] == result["log_probs"][0]
    assert result["log_probs"][2] != result["log_probs"][0]


@pytest.mark.e2e
def test_a_tensorflow_serving_rest_request_matches_the_signature(exported):
    """TensorFlow Serving cannot run here: the README's request is checked against the signature instead. Its REST
    API maps each of "instances" to one batch item of the only input, {"b64": …} to the bytes of a string."""
    import tensorflow as tf

    project, images, _ = exported
    serve = tf.saved_model.load(str(project / "export" / export.SAVED_MODEL)).signatures[export.SIGNATURE]
    (name, spec), *others = serve.structured_input_signature[1].items()
    assert (name, spec.dtype, spec.shape.as_list(), others) == (export.INPUT, tf.string, [None], [])
    assert {key: value.dtype for key, value in serve.structured_outputs.items()} == {
        "captions": tf.string,
        "log_probs": tf.float32,
        "errors": tf.string,
    }
    request = {"signature_name": "serving_default", "instances": [{"b64": base64.b64encode(p.read_bytes()).decode()}
                                                                  for p in images[:2]]}  # fmt: skip
    payload = json.loads(json.dumps(request))
    batch = [base64.b64decode(instance["b64"]) for instance in payload["instances"]]
    outputs = serve(**{name: tf.constant(batch)})
    predictions = [{key: value[i].numpy() for key, value in outputs.items()} for i in range(len(batch))]
    assert [p["captions"].decode() for p in predictions] == repository_captions(project, images[:2])


@pytest.mark.e2e
def test_caption_with_export_prints_what_caption_prints(exported, tmp_path, capsys, monkeypatch):
    project, images, _ = exported
    monkeypatch.chdir(project)
    settings = yaml.safe_load((project / "params.yaml").read_text())["evaluate"]
    decoding = ["--beam", str(settings["beam_size"]), "--max-len", str(settings["max_len"])]
    printed, notes = [], []
    for options in (["--export", "export"], decoding):
        assert cli.main([*map(str, images), "--json", *options]) == 0
        out, err = capsys.readouterr()
        printed.append(out)
        notes.append(err.split(" was trained on generated shapes")[0])  # the note names the model's folder
    assert printed[0] == printed[1] and len(printed[0].splitlines()) == len(images)
    assert notes == ["caption: note: the model in export/", "caption: note: the model in models/"]
    assert cli.main([str(images[0]), "--export", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith(f"caption: error: {tmp_path} holds no exported model")
    (tmp_path / export.SAVED_MODEL).mkdir()
    (tmp_path / export.SAVED_MODEL / "saved_model.pb").write_bytes(b"\x00damaged")
    assert cli.main([str(images[0]), "--export", str(tmp_path)]) == 1
    damaged = capsys.readouterr().err
    assert "not a loadable SavedModel" in damaged and len(damaged.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("name", "shape", "dtype", "outputs"),
    [
        ("images", [None], "float32", ("captions", "log_probs", "errors")),  # other inputs
        ("pixels", [None, None, None, 3], "uint8", ("captions", "log_probs", "errors")),
        ("images", [None], "string", ("captions",)),  # other outputs
    ],
)
def test_caption_with_export_refuses_a_saved_model_of_another_signature_in_one_line(
    tmp_path, capsys, name, shape, dtype, outputs
):
    import tensorflow as tf

    module = tf.Module()

    @tf.function(input_signature=[tf.TensorSpec(shape, dtype, name=name)])
    def serve(value):
        count = tf.shape(value)[0]
        produced = {"captions": tf.fill([count], "x"), "log_probs": tf.zeros([count]), "errors": tf.fill([count], "")}
        return {key: produced[key] for key in outputs}

    tf.saved_model.save(module, str(tmp_path / export.SAVED_MODEL), signatures={export.SIGNATURE: serve})
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\x89PNG")
    assert cli.main([str(photo), "--export", str(tmp_path)]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith(f"caption: error: {tmp_path / export.SAVED_MODEL}")
    assert error.endswith(
        "must take images (string [N]) and return captions (string), log_probs (float32), errors (string)"
    )


def problems(images):
    """Why the SavedModel would refuse each of ``images``, computed in a graph as it does."""
    import tensorflow as tf

    return tf.function(lambda images: export._problem(images, export.claimed_pixels_each(images)))(images)


def test_a_header_claiming_too_many_pixels_is_refused_before_decoding_and_named():
    """Generated hostile headers: a few bytes claiming billions of pixels (PNG, GIF, BMP stored top-down), headers cut
    short, random bytes. Sizes are read without decoding, never fail, and a bomb gets its own reason."""
    import struct
    import zlib

    import tensorflow as tf

    def png(width: int, height: int) -> bytes:
        header = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + header + struct.pack(">I", zlib.crc32(header))

    gif = b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\0" * 10
    bmp = b"BM" + b"\0" * 16 + struct.pack("<ii", 40_000, -30_000) + b"\0" * 30
    claims = [png(100_000, 100_000), gif, bmp, png(640, 480), png(640, 480)[:18], b"BM", b"", png(2**32 - 1, 2**32 - 1)]
    rng = np.random.default_rng(0)
    claims += [rng.bytes(int(n)) for n in rng.integers(0, 40, size=20)]
    claimed = tf.function(export.claimed_pixels)  # traced once: its walks run as graph loops, not step by step
    pixels = [int(claimed(tf.constant(claim))) for claim in claims]
    assert pixels[:4] == [10**10, 65535**2, 1_200_000_000, 640 * 480]
    assert pixels[7] == 2**62 and all(0 <= value for value in pixels)  # clamped: no overflow past the check
    reasons = [reason.decode() for reason in problems(tf.constant(claims[:4])).numpy()]
    assert reasons == [export.TOO_MANY_PIXELS] * 3 + [export.UNDECODABLE]


def test_every_format_and_every_frame_is_counted_before_decoding():
    """JPEG (its frame header behind an EXIF segment and fill bytes), WebP (lossy, lossless, extended) and each frame
    of a GIF: what the headers claim is what decoding would make, bombs are named, broken structure is refused."""
    import io

    import tensorflow as tf
    from PIL import Image

    def saved(image, **options) -> bytes:
        stream = io.BytesIO()
        image.save(stream, **options)
        return stream.getvalue()

    photo, exif = Image.new("RGB", (64, 48), "red"), Image.Exif()
    exif[0x0112] = 6
    frames = [Image.new("RGB", (50, 40), colour) for colour in ("red", "blue", "green")]
    honest = {
        "jpeg with exif": (saved(photo, format="JPEG", exif=exif), 64 * 48),
        "progressive jpeg": (saved(photo, format="JPEG", progressive=True), 64 * 48),
        "webp": (saved(photo, format="WEBP"), 64 * 48),
        "lossless webp": (saved(photo, format="WEBP", lossless=True), 64 * 48),
        "three-frame gif": (saved(frames[0], format="GIF", save_all=True, append_images=frames[1:]), 3 * 50 * 40),
        "still gif": (saved(frames[0], format="GIF"), 50 * 40),
        "hand-made gif": (animated_gif(30, 20, 5), 5 * 600),
    }
    claimed = tf.function(export.claimed_pixels)  # traced once: its walks run as graph loops, not step by step
    for name, (encoded, pixels) in honest.items():
        assert int(claimed(tf.constant(encoded))) == pixels, name
    jpeg = honest["jpeg with exif"][0]
    sof = jpeg.index(b"\xff\xc0")
    bombs = [
        jpeg[:sof] + b"\xff\xff" + jpeg[sof : sof + 5] + (12000).to_bytes(2, "big") * 2 + jpeg[sof + 9 :],  # 144 MP
        b"RIFF\0\0\0\0WEBPVP8X" + b"\0" * 8 + (16383).to_bytes(3, "little") * 2,  # a 16384² canvas
        animated_gif(1000, 1000, 100),  # 100 one-pixel frames on a 1 MP screen
    ]
    broken = [
        jpeg[: jpeg.index(b"\xff\xdb")] + b"\xff\xda\x00\x02",
        b"\xff\xd8\xff" + b"\x00" * 20,
    ]  # scan first; no marker
    claims = [int(claimed(tf.constant(encoded))) for encoded in bombs + broken]
    assert claims[0] == 144_000_000 and claims[1] == 16384**2 and claims[2] > 80_000_000
    assert claims[3:] == [export.UNKNOWN_SIZE] * 2
    reasons = [reason.decode() for reason in problems(tf.constant(bombs + broken)).numpy()]
    assert reasons == [export.TOO_MANY_PIXELS] * 3 + [export.UNDECODABLE] * 2
    # Hostile bytes after each format's signature: the walk always ends, never fails, and claims ≥ -1.
    rng = np.random.default_rng(1)
    fuzzed = [magic + rng.bytes(int(n)) for magic in export.MAGIC for n in rng.integers(0, 300, size=15)]
    fuzzed += [animated_gif(9, 9, 3)[: int(n)] for n in rng.integers(0, 80, size=15)]
    assert all(int(claimed(tf.constant(encoded))) >= -1 for encoded in fuzzed)


def test_a_fine_tuned_encoder_nesting_the_backbone_saves_under_names_a_saved_model_accepts(tmp_path):
    """The fine-tuned encoder wraps EfficientNet-Lite (layers named after torch keys, ``_bn1``…) in a model of its own:
    renamed at every depth, with the same weights and outputs, it saves as a SavedModel."""
    import keras
    import tensorflow as tf

    from captioner.features import efficientnet_lite

    backbone = efficientnet_lite.build(efficientnet_lite.VARIANTS["efficientnet_lite0"], input_size=32)
    images = keras.Input((32, 32, 3))
    encoder = keras.Model(images, keras.layers.GlobalAveragePooling2D()(backbone(images)), name="encoder")
    saveable = export._saveable(encoder)
    pixels = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(saveable(pixels, training=False), encoder(pixels, training=False))
    module = tf.Module()
    module.encoder = saveable
    module.encode = tf.function(
        lambda x: module.encoder(x, training=False), input_signature=[tf.TensorSpec([None, 32, 32, 3])]
    )
    tf.saved_model.save(module, str(tmp_path / "encoder"))
    loaded = tf.saved_model.load(str(tmp_path / "encoder"))  # kept: its functions need its variables alive
    np.testing.assert_allclose(loaded.encode(pixels), encoder(pixels, training=False), rtol=1e-6)
