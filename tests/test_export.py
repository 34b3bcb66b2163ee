"""The export stage (captioner.export): the shipped model captions images with TensorFlow alone, as `caption` does."""

import base64
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from captioner import export
from tests.tiny_pipeline import ENVIRONMENT, dvc, ran

# Run by a fresh interpreter outside the repository, ``captioner`` made unimportable: the model must not need it.
STAND_ALONE = """
import json, sys
sys.modules["captioner"] = None
import numpy as np
import tensorflow as tf

kind, model, *paths = sys.argv[1:]
images = [open(path, "rb").read() for path in paths]
if kind == "saved_model":
    serve = tf.saved_model.load(model).signatures["serving_default"]
    outputs = serve(images=tf.constant(images))
    result = {key: value.numpy().tolist() for key, value in outputs.items()}
    result["captions"] = [caption.decode() for caption in result["captions"]]
    result["errors"] = [error.decode() for error in result["errors"]]
else:
    caption = tf.lite.Interpreter(model_path=model).get_signature_runner()  # its one signature
    pixels = [tf.io.decode_image(image, channels=3, expand_animations=False).numpy() for image in images]
    def words(outputs):
        return [" ".join(word.decode() for word in row if word) for row in outputs["words"]]
    alone = [caption(pixels=image[None]) for image in pixels]  # one at a time, then all at once (one size)
    result = {"captions": [words(outputs)[0] for outputs in alone]}
    result["log_probs"] = [float(outputs["log_probs"][0]) for outputs in alone]
    result["batched"] = words(caption(pixels=np.stack(pixels)))
print(json.dumps(result))
"""


def stand_alone(kind: str, model, paths, tmp_path) -> dict:
    result = subprocess.run(
        [sys.executable, "-I", "-c", STAND_ALONE, kind, str(model), *map(str, paths)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.splitlines()[-1])


def repository_captions(repo, paths, *options) -> dict[str, str]:
    settings = yaml.safe_load((repo / "params.yaml").read_text())["evaluate"]
    command = ["caption", *map(str, paths), "--json", *options]
    if not options:
        command += ["--beam", str(settings["beam_size"]), "--max-len", str(settings["max_len"])]
    result = subprocess.run(command, cwd=repo, capture_output=True, text=True, env=ENVIRONMENT)
    assert result.returncode == 0, result.stderr
    return {line["image"]: line["caption"] for line in map(json.loads, result.stdout.splitlines())}


@pytest.fixture(scope="module")
def exported(tiny_repo, tmp_path_factory):
    """The tiny repo's export (written by its first repro) and five of its test images."""
    repo, first = tiny_repo
    assert "export" in ran(first)
    images = sorted((repo / "data" / "raw" / "Flicker8k_Dataset").iterdir())
    test = {line.split("\t")[0] for line in (repo / "data" / "captions" / "test.tsv").read_text().splitlines()}
    return repo, [path for path in images if path.name in test][:5], tmp_path_factory.mktemp("stand-alone")


@pytest.mark.e2e
def test_a_fresh_tensorflow_process_captions_as_the_caption_command_and_reports_bad_items(exported):
    repo, images, outside = exported
    truncated = outside / "truncated.jpg"
    truncated.write_bytes(images[0].read_bytes()[:300])
    (outside / "notes.txt").write_text("not an image")
    (outside / "empty.png").write_bytes(b"")
    batch = [images[0], truncated, images[1], outside / "notes.txt", outside / "empty.png", *images[2:]]
    result = stand_alone("saved_model", repo / "export" / export.SAVED_MODEL, batch, outside)
    expected = repository_captions(repo, images)
    good = [0, 2, 5, 6, 7]
    assert [result["captions"][i] for i in good] == [expected[str(path)] for path in images]
    assert all(result["captions"][i] for i in good) and not any(result["errors"][i] for i in good)
    assert [result["errors"][i] for i in (1, 3, 4)] == [export.UNDECODABLE, export.NOT_AN_IMAGE, "empty input"]
    assert [result["captions"][i] for i in (1, 3, 4)] == ["", "", ""]
    assert all(value < 0 for value in np.array(result["log_probs"])[good])
    print("\n".join(f"{path.name}: {result['captions'][i]}" for i, path in zip(good, images, strict=True)))


@pytest.mark.e2e
def test_the_tflite_file_captions_the_same_pixels_with_the_same_words(exported):
    """The test images (64 px) are enlarged to the encoder's input, where TensorFlow Lite's resize (no antialiasing)
    gives the same pixels: the same captions, one image at a time or all at once; log-probabilities agree to float
    tolerance (other kernels)."""
    repo, images, outside = exported
    saved = stand_alone("saved_model", repo / "export" / export.SAVED_MODEL, images, outside)
    lite = stand_alone("tflite", repo / "export" / export.TFLITE_FILE, images, outside)
    assert lite["captions"] == lite["batched"] == saved["captions"]
    assert all(saved["captions"])
    np.testing.assert_allclose(lite["log_probs"], saved["log_probs"], rtol=1e-3, atol=1e-3)
    card = json.loads((repo / "export" / export.EXPORT_CARD).read_text())
    assert card["tflite_bytes"] == (repo / "export" / export.TFLITE_FILE).stat().st_size > 1_000_000  # weights in
    sizes = json.loads((repo / "metrics" / "export.json").read_text())
    assert sizes["tflite_mb"] == round(card["tflite_bytes"] / 2**20, 1)


@pytest.mark.e2e
def test_the_exported_model_turns_a_photo_upright_by_its_exif_orientation(exported, tmp_path):
    """A photo stored sideways with EXIF orientation 6 gets exactly the caption and log-probability of the upright
    photo (PNG: lossless, so the pixels are the same once turned); without the tag, the model sees another picture."""
    from PIL import Image

    repo, images, outside = exported
    upright = np.asarray(Image.open(images[0]).convert("RGB"))
    stored = np.rot90(upright, 1).copy()  # orientation 6 turns this back
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(upright).save(tmp_path / "upright.png")
    Image.fromarray(stored).save(tmp_path / "tagged.png", exif=exif)
    Image.fromarray(stored).save(tmp_path / "untagged.png")
    paths = [tmp_path / name for name in ("upright.png", "tagged.png", "untagged.png")]
    result = stand_alone("saved_model", repo / "export" / export.SAVED_MODEL, paths, outside)
    assert result["captions"][1] == result["captions"][0] and result["log_probs"][1] == result["log_probs"][0]
    assert result["log_probs"][2] != result["log_probs"][0]


@pytest.mark.e2e
def test_a_tensorflow_serving_rest_request_matches_the_signature(exported):
    """TensorFlow Serving cannot run here: the README's request is checked against the signature instead. Its REST
    API maps each of "instances" to one batch item of the only input, {"b64": …} to the bytes of a string."""
    import tensorflow as tf

    repo, images, _ = exported
    serve = tf.saved_model.load(str(repo / "export" / export.SAVED_MODEL)).signatures[export.SIGNATURE]
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
    assert [p["captions"].decode() for p in predictions] == list(repository_captions(repo, images[:2]).values())


@pytest.mark.e2e
def test_caption_with_export_prints_what_caption_prints(exported, tmp_path):
    repo, images, _ = exported
    assert repository_captions(repo, images, "--export", "export") == repository_captions(repo, images)
    missing = subprocess.run(
        ["caption", str(images[0]), "--export", str(tmp_path)], cwd=repo, capture_output=True, text=True
    )
    assert missing.returncode == 1 and missing.stderr.startswith(f"caption: error: {tmp_path} holds no exported model")
    (tmp_path / export.SAVED_MODEL).mkdir()
    (tmp_path / export.SAVED_MODEL / "saved_model.pb").write_bytes(b"\x00damaged")
    damaged = subprocess.run(
        ["caption", str(images[0]), "--export", str(tmp_path)], cwd=repo, capture_output=True, text=True
    )
    assert damaged.returncode == 1 and "not a loadable SavedModel" in damaged.stderr
    assert len(damaged.stderr.strip().splitlines()) == 1


@pytest.mark.e2e
def test_export_reruns_only_for_the_model_or_the_decoding_params_and_ships_through_the_registry(repo, tmp_path):
    repo, _ = repo

    def rerun_with(**evaluate) -> set[str]:
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["evaluate"].update(evaluate)
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        stages = ran(dvc(repo, "repro", "--dry"))
        subprocess.run(["git", "checkout", "params.yaml"], cwd=repo, check=True)
        return stages

    assert rerun_with(batch_size=7) == set()  # speed only
    assert rerun_with(beam_size=2) == rerun_with(max_len=9) == {"evaluate", "export"}
    dvc(repo, "push")
    tag = ["git", "tag", "-a", "captioner@v0.1.0", "-m", "Registering artifact captioner version v0.1.0"]
    subprocess.run(tag, cwd=repo, check=True, env=ENVIRONMENT)  # a version, as `gto register captioner` tags it
    dvc(repo, "artifacts", "get", str(repo), "captioner", "-o", str(tmp_path / "shipped"))
    assert (tmp_path / "shipped" / export.TFLITE_FILE).is_file()
    assert (tmp_path / "shipped" / export.SAVED_MODEL / "saved_model.pb").is_file()


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
    pixels = [int(export.claimed_pixels(tf.constant(claim))) for claim in claims]
    assert pixels[:4] == [10**10, 65535**2, 1_200_000_000, 640 * 480]
    assert pixels[7] == 2**62 and all(0 <= value for value in pixels)  # clamped: no overflow past the check
    reasons = [reason.decode() for reason in tf.function(export._problem)(tf.constant(claims[:4])).numpy()]  # graph
    assert reasons == [export.TOO_MANY_PIXELS] * 3 + [export.UNDECODABLE]


def test_a_fine_tuned_encoder_nesting_the_backbone_saves_under_names_a_saved_model_accepts(tmp_path):
    """The fine-tuned encoder wraps EfficientNet-Lite (layers named after torch keys, ``_bn1``…) in a model of its own:
    renamed at every depth, with the same weights and outputs, it saves as a SavedModel."""
    import keras
    import tensorflow as tf

    from captioner import efficientnet_lite

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
