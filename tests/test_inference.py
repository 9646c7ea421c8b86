import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest

from vesselseg.backends import load_keras_model
from vesselseg.config import PreprocessConfig
from vesselseg.datasets import generate_fundus
from vesselseg.errors import ModelLoadError
from vesselseg.inference import Segmenter
from vesselseg.model import get_model


@pytest.fixture(scope="module")
def segmenter(tiny_run):
    return Segmenter.from_run(tiny_run)


@pytest.mark.parametrize("shape", [(100, 140), (333, 257), (128, 128)])
def test_probabilities_come_back_at_native_size(segmenter, shape):
    image = np.random.default_rng(0).integers(0, 255, (*shape, 3), dtype=np.uint8)
    prediction = segmenter.predict(image)
    assert prediction.probability.shape == shape and prediction.mask.shape == shape
    assert prediction.probability.dtype == np.float32
    assert 0.0 <= prediction.probability.min() and prediction.probability.max() <= 1.0
    assert not prediction.mask[~prediction.fov].any()


def test_run_threshold_is_used_by_default(tiny_run, segmenter):
    import json

    expected = json.loads((tiny_run / "threshold.json").read_text())["threshold"]
    assert segmenter.threshold == pytest.approx(expected)
    assert Segmenter.from_run(tiny_run, threshold=0.3).threshold == 0.3


def test_flip_tta_averages_four_flips(segmenter):
    fundus = generate_fundus(7, 128)
    plain = segmenter.predict(fundus.image, fundus.fov).probability
    segmenter.tta = True
    try:
        tta = segmenter.predict(fundus.image, fundus.fov).probability
    finally:
        segmenter.tta = False
    assert tta.shape == plain.shape and not np.allclose(tta, plain)
    # TTA of a horizontally flipped input is the flipped TTA of the input
    model_input = segmenter.prepare(fundus.image, fundus.fov)[0][None]
    segmenter.tta = True
    try:
        direct = segmenter._predict_tensor(model_input)
        flipped = segmenter._predict_tensor(np.ascontiguousarray(model_input[:, :, ::-1]))
    finally:
        segmenter.tta = False
    assert np.allclose(flipped[:, :, ::-1], direct, atol=1e-4)


def test_multiscale_averages_native_probabilities_of_each_scale(segmenter):
    from vesselseg.inference import Segmenter

    fundus = generate_fundus(5, 150)
    multi = Segmenter(segmenter.model, segmenter.preprocess, threshold=0.4, depth=2,
                      scales=(1.0, 1.25, 1.5))
    assert multi.scale_sizes == [128, 160, 192] and multi.setting == "scales=1,1.25,1.5"
    averaged = multi.predict(fundus.image, fundus.fov)
    singles = [multi.at_size(size).predict(fundus.image, fundus.fov).probability
               for size in (128, 160, 192)]
    assert not np.allclose(singles[0], singles[2], atol=1e-3)  # the scales do differ
    assert np.allclose(averaged.probability, np.mean(singles, axis=0), atol=1e-6)
    assert np.array_equal(averaged.mask, (averaged.probability >= 0.4) & averaged.fov)
    assert multi.scales == (1.0, 1.25, 1.5)  # at_size left the original alone
    # the streaming path gives the same maps, errors still reported per item
    images = {"a": (fundus.image, fundus.fov), "b": None}

    def load(key):
        if images[key] is None:
            raise OSError("unreadable")
        return images[key]

    streamed = dict(multi.predict_many(["a", "b"], load))
    assert np.allclose(streamed["a"].probability, averaged.probability, atol=1e-6)
    assert "unreadable" in str(streamed["b"])


@pytest.mark.parametrize("text, expected", [("multi", None), ("1,1.25", (1.0, 1.25)),
                                            ("1", (1.0,))])
def test_parse_scales(text, expected):
    from vesselseg.inference import MULTI_SCALES, parse_scales

    assert parse_scales(text) == (expected or MULTI_SCALES)


@pytest.mark.parametrize("text", ["", "0.5,1", "1,1", "big", "nan", "1,inf", "1e9"])
def test_parse_scales_rejects_bad_lists(text):
    from vesselseg.errors import ConfigError
    from vesselseg.inference import parse_scales

    with pytest.raises(ConfigError, match="scales"):
        parse_scales(text)


def test_tiled_prediction_agrees_with_whole_image_inside_tiles():
    keras.utils.set_random_seed(1)
    model = get_model("unet", base_filters=4, depth=2, batch_norm=False)
    config = PreprocessConfig(size=64, crop_to_fov=False)
    image = (np.random.default_rng(1).random((1, 128, 128, 3))).astype(np.float32)
    whole = Segmenter(model, config, working_size=128)
    whole.working_size = 64  # run the 128 input in one piece through the model
    full = whole._predict_tensor(image)[0]
    tiled = Segmenter(model, config, working_size=128, tile_overlap=16)._predict_tiled(image[0])
    # away from tile borders (receptive field) the two agree
    inner = (slice(12, 40), slice(12, 40))
    assert np.allclose(full[inner], tiled[inner], atol=1e-4)
    assert tiled.shape == full.shape


def test_a_runs_working_size_is_its_default_and_runs_whole(tiny_run, tmp_path):
    """A run trained to work at a larger size (working_size) is tested and used at that size,
    in one piece through the fully convolutional model, unless the caller asks otherwise."""
    import json
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    config = json.loads((run / "config.json").read_text())
    size = config["preprocess"]["size"]
    config["working_size"] = size + 32
    (run / "config.json").write_text(json.dumps(config))
    segmenter = Segmenter.from_run(run)
    assert segmenter.working_size == size + 32 and segmenter.runs_whole
    assert Segmenter.from_run(run, working_size=size).working_size == size
    fundus = generate_fundus(4, 200)
    model_input, fov, box = segmenter.prepare(fundus.image, fundus.fov)
    assert model_input.shape[:2] == (size + 32, size + 32)
    direct = np.asarray(segmenter.model(model_input[None], training=False))[0, ..., 0]
    assert np.allclose(segmenter.predict_prepared(model_input[None])[0], direct, atol=1e-5)
    assert segmenter.predict(fundus.image, fundus.fov).probability.shape == (200, 200)


def test_a_working_size_the_network_cannot_take_whole_uses_tiles(tiny_run):
    """The U-Net's pooling needs sides divisible by 2**depth: other sizes go in windows."""
    segmenter = Segmenter.from_run(tiny_run, working_size=128 + 18)  # tiny run: 128, depth 2
    assert not segmenter.runs_whole
    fundus = generate_fundus(6, 200)
    assert segmenter.predict(fundus.image, fundus.fov).probability.shape == (200, 200)


def test_large_working_size_uses_tiles(tiny_run):
    segmenter = Segmenter.from_run(tiny_run, working_size=256)
    assert not segmenter.runs_whole  # 2x the training size: windows bound the memory
    fundus = generate_fundus(3, 300)
    prediction = segmenter.predict(fundus.image)
    assert prediction.probability.shape == (300, 300)


def test_predict_many_reports_errors_per_item(segmenter, tmp_path):
    from vesselseg.io import read_image, write_png

    good = tmp_path / "good.png"
    write_png(good, generate_fundus(1, 96).image)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    results = list(segmenter.predict_many([good, bad, good], lambda p: (read_image(p), None)))
    assert [type(r).__name__ for _, r in results] == ["Prediction", "ImageReadError",
                                                       "Prediction"]
    assert "bad.png" in str(results[1][1])


def test_missing_run_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        Segmenter.from_run(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match="not a vesselseg run folder"):
        Segmenter.from_run(tmp_path)


def test_a_file_that_is_not_a_model_is_refused(tmp_path):
    path = tmp_path / "fake.keras"
    path.write_bytes(b"definitely not a zip")
    with pytest.raises(ModelLoadError, match="fake.keras"):
        load_keras_model(path)
    with zipfile.ZipFile(tmp_path / "empty.keras", "w") as archive:
        archive.writestr("hello.txt", "hi")
    with pytest.raises(ModelLoadError):
        load_keras_model(tmp_path / "empty.keras")


def test_lambda_layer_is_refused_by_safe_mode(tmp_path):
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Lambda(lambda x: x * 2.0)(inputs)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(ModelLoadError, match="safe mode"):
        load_keras_model(path)


# -- the model shipped inside the package ------------------------------------------------------
def test_shipped_model_is_small_safe_and_complete():
    import json

    from vesselseg.runs import PRETRAINED_DIR

    model_file = PRETRAINED_DIR / "best.keras"
    assert model_file.stat().st_size <= 10 * 1024 * 1024
    load_keras_model(model_file)  # safe mode
    threshold = json.loads((PRETRAINED_DIR / "threshold.json").read_text())
    assert 0.05 < threshold["threshold"] < 0.95
    assert (PRETRAINED_DIR / "MODEL_CARD.md").exists()
    segmenter = Segmenter.pretrained()
    assert segmenter.threshold == pytest.approx(threshold["threshold"])


def test_shipped_model_segments_real_drive_test_images(drive_dir):
    """Two DRIVE test images (never seen in training), native resolution, official FOV: the
    shipped model must be far better than chance and near its published figure."""
    from vesselseg.evaluation import PooledEvaluator
    from vesselseg.io import read_image, read_mask

    segmenter = Segmenter.pretrained()
    evaluator = PooledEvaluator(threshold=segmenter.threshold)
    for number in ("01", "02"):
        image = read_image(drive_dir / "test" / "images" / f"{number}_test.tif")
        truth = read_mask(drive_dir / "test" / "1st_manual" / f"{number}_manual1.gif")
        fov = read_mask(drive_dir / "test" / "mask" / f"{number}_test_mask.gif")
        prediction = segmenter.predict(image, fov)
        evaluator.add(number, prediction.probability, truth, fov)
    pooled = evaluator.pooled()
    assert pooled["f1"] > 0.78 and pooled["auc_roc"] > 0.97, pooled


def test_bfloat16_inference_stays_close_to_float32(tiny_run):
    fundus = generate_fundus(5, 128)
    float32 = Segmenter.from_run(tiny_run, precision="float32").predict(fundus.image, fundus.fov)
    bfloat16 = Segmenter.from_run(tiny_run, precision="bfloat16")
    assert bfloat16.model.dtype_policy.name == "mixed_bfloat16"
    fast = bfloat16.predict(fundus.image, fundus.fov)
    assert fast.probability.dtype == np.float32
    assert np.abs(fast.probability - float32.probability).max() < 0.05


def test_the_shipped_model_runs_auto_unless_told_otherwise(monkeypatch):
    from vesselseg import devices

    monkeypatch.setattr(devices, "gpus", lambda: [])
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: True)
    assert Segmenter.pretrained().compute_precision == "bfloat16"
    assert Segmenter.pretrained(precision="float32").compute_precision == "float32"


def test_bfloat16_needs_the_keras_backend_and_a_known_precision(tiny_run):
    from vesselseg.errors import ConfigError

    with pytest.raises(ConfigError, match="keras backend only"):
        Segmenter.from_run(tiny_run, backend="onnx", precision="bfloat16")
    with pytest.raises(ConfigError, match="valid: auto, float32, bfloat16"):
        Segmenter.from_run(tiny_run, precision="float16")


def test_auto_precision_is_bfloat16_only_where_the_cpu_runs_it(tiny_run, monkeypatch):
    from vesselseg import devices
    from vesselseg.inference import resolve_inference_precision

    monkeypatch.setattr(devices, "gpus", lambda: [])
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: True)
    assert resolve_inference_precision("auto") == "bfloat16"
    assert resolve_inference_precision("auto", "onnx") is None  # exports stay float32
    assert resolve_inference_precision("float32") == "float32"
    segmenter = Segmenter.from_run(tiny_run, precision="auto")
    assert segmenter.compute_precision == "bfloat16"
    assert segmenter.model.dtype_policy.name == "mixed_bfloat16"
    export_like = Segmenter(None, segmenter.preprocess, runner=lambda x: x[..., 0], backend="onnx")
    assert export_like.compute_precision == "float32"
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: False)
    # never emulated bfloat16, even for a model trained in it (the shipped one)
    assert resolve_inference_precision("auto") == "float32"
    assert Segmenter.from_run(tiny_run, precision="auto").compute_precision == "float32"
    monkeypatch.setattr(devices, "gpus", lambda: ["GPU:0"])
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: True)
    assert resolve_inference_precision("auto") is None


def test_the_keras_path_runs_the_trained_model_with_batch_norm_folded(tiny_run):
    import keras

    trained = load_keras_model(tiny_run / "best.keras")
    assert any(isinstance(layer, keras.layers.BatchNormalization) for layer in trained.layers)
    segmenter = Segmenter.from_run(tiny_run)  # as trained: float32
    assert segmenter.model.dtype_policy.name == "float32"
    assert not any(isinstance(layer, keras.layers.BatchNormalization)
                   for layer in segmenter.model.layers)
    fundus = generate_fundus(2, 128)
    batch = segmenter.prepare(fundus.image, fundus.fov)[0][None]
    np.testing.assert_allclose(segmenter.predict_prepared(batch),
                               np.asarray(trained(batch, training=False))[..., 0], atol=1e-4)


def test_a_run_trained_in_bfloat16_computes_in_bfloat16_by_default(tiny_run, tmp_path):
    """Keras saves the dtype policy per layer; the run's own precision must survive loading."""
    import shutil

    from benchmarks.speed import default_precision
    from vesselseg.devices import dtype_policy
    from vesselseg.model import get_model

    run = tmp_path / "bf16_run"
    shutil.copytree(tiny_run, run)
    trained = load_keras_model(run / "best.keras")
    with dtype_policy("mixed_bfloat16"):
        model = get_model("unet", base_filters=4, depth=2, batch_norm=True)
    model.set_weights(trained.get_weights())
    model.save(run / "best.keras")

    assert Segmenter.from_run(run).compute_precision == "bfloat16"
    assert Segmenter.from_run(run, precision="float32").compute_precision == "float32"
    assert default_precision(run) == "bfloat16"


def test_inference_never_writes_into_the_package(tmp_path, monkeypatch):
    """An export backend needs an export made beforehand: asking for one that does not exist
    is an error naming the command, and nothing appears in the installed package."""
    from vesselseg.errors import RunFolderError
    from vesselseg.runs import PRETRAINED_DIR

    monkeypatch.setenv("VESSELSEG_CACHE", str(tmp_path / "cache"))
    before = sorted(p.name for p in PRETRAINED_DIR.iterdir())
    with pytest.raises(RunFolderError, match="vesselseg export --run pretrained --format onnx"):
        Segmenter.pretrained(backend="onnx")
    assert sorted(p.name for p in PRETRAINED_DIR.iterdir()) == before
    assert not (tmp_path / "cache").exists()


# -- the input contract of Segmenter.predict ------------------------------------------------------
@pytest.fixture(scope="module")
def photo():
    return generate_fundus(3, size=160).image


def _same_prediction(a, b):
    np.testing.assert_allclose(a.probability, b.probability, atol=1e-6)
    assert np.array_equal(a.mask, b.mask)


def test_every_accepted_form_of_a_photo_gives_the_same_mask(segmenter, photo, tmp_path):
    from PIL import Image

    from vesselseg.io import write_png

    reference = segmenter.predict(photo)
    path = write_png(tmp_path / "photo.png", photo)
    rgba = np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)])
    forms = {
        "uint16 full range": photo.astype(np.uint16) * 257,  # silently wrong before
        "float in [0, 1]": photo / 255.0,
        "float32": (photo / 255.0).astype(np.float32),
        "int32": photo.astype(np.int32),
        "RGBA": rgba,
        "PIL": Image.fromarray(photo),
        "path": path,
        "str path": str(path),
    }
    for name, form in forms.items():
        result = segmenter.predict(form)
        assert result.mask.shape == photo.shape[:2], name
        _same_prediction(result, reference)


def test_grayscale_forms_agree(segmenter, photo):
    gray = photo[..., 1]
    reference = segmenter.predict(np.dstack([gray] * 3))
    for form in (gray, gray[..., None], gray.astype(np.uint16) * 257, gray / 255.0):
        _same_prediction(segmenter.predict(form), reference)


def test_a_batch_returns_one_prediction_per_photo_in_order(segmenter, photo):
    other = np.ascontiguousarray(photo[::-1])
    singles = [segmenter.predict(photo), segmenter.predict(other)]
    for batch in ([photo, other], np.stack([photo, other])):
        results = segmenter.predict(batch)
        assert isinstance(results, list) and len(results) == 2
        for result, single in zip(results, singles):
            _same_prediction(result, single)


@pytest.mark.parametrize("bad, error, words", [
    (np.zeros((64, 64, 3), bool), TypeError, "dtype bool"),
    (np.full((64, 64, 3), np.nan), ValueError, "NaN"),
    (np.full((64, 64, 3), 2.0), ValueError, "[0, 1]"),
    (np.full((64, 64, 3), -0.5), ValueError, "[0, 1]"),
    (np.zeros((0, 0, 3), np.uint8), ValueError, "empty"),
    (np.zeros((1, 1, 64, 64, 3), np.uint8), ValueError, "shape"),
    (np.zeros((64, 64, 2), np.uint8), ValueError, "shape"),
    (np.full((64, 64), -3, np.int16), ValueError, "negative"),
    (3, TypeError, "int"),
    ({"image": 1}, TypeError, "dict"),
])
def test_rejected_inputs_say_what_is_accepted(segmenter, bad, error, words):
    with pytest.raises(error) as caught:
        segmenter.predict(bad)
    assert words in str(caught.value)
    if "NaN" not in words and "negative" not in words and "[0, 1]" not in words:
        assert "HxW" in str(caught.value)  # the accepted forms are listed


@pytest.mark.parametrize("kind", ["truncated", "hdf5"])
def test_a_truncated_or_hdf5_model_file_is_named_for_what_it_is(tiny_run, tmp_path, kind):
    import shutil

    run = shutil.copytree(tiny_run, tmp_path / "run")
    model = run / "best.keras"
    if kind == "truncated":
        model.write_bytes(model.read_bytes()[:5000])
    else:
        model.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    with pytest.raises(ModelLoadError) as caught:
        Segmenter.from_run(run)
    message = str(caught.value)
    assert str(model) in message and "not found" not in message.lower()
    assert ("HDF5" in message) == (kind == "hdf5")


# -- Ctrl-C during a model call ------------------------------------------------------------------
CTRL_C_DURING_A_LONG_C_CALL = """
import hashlib, os, signal, sys, threading, time
from vesselseg.inference import MODEL_CALL_ABANDONED, call_interruptibly
from vesselseg.cli import exit_now_if_model_call_abandoned
signal.signal(signal.SIGINT, signal.default_int_handler)  # pytest-xdist workers ignore SIGINT
def model_pass():  # a C loop that never checks for signals, like a TensorFlow op
    return hashlib.pbkdf2_hmac("sha256", b"x", b"y", 4_000_000)
threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
start = time.monotonic()
try:
    call_interruptibly(model_pass)
except KeyboardInterrupt:
    print(f"{time.monotonic() - start:.2f}", MODEL_CALL_ABANDONED.is_set(), flush=True)
    exit_now_if_model_call_abandoned(130)
print("not reached")
"""


def test_ctrl_c_is_seen_during_a_model_call_and_the_process_ends_at_once():
    """A call into TensorFlow cannot be interrupted: eval's Ctrl-C waited for the model pass
    (2-3 s at 704 px); now the call runs in a thread, and the command ends with os._exit (the
    interpreter crashed, exit 139, when it finalized under a running op)."""
    result = subprocess.run([sys.executable, "-c", CTRL_C_DURING_A_LONG_C_CALL],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 130, result.stdout + result.stderr
    seconds, abandoned = result.stdout.split()
    assert abandoned == "True"
    assert float(seconds) < 1.0


def test_a_call_outside_the_main_thread_or_without_ctrl_c_is_plain():
    from vesselseg.inference import MODEL_CALL_ABANDONED, call_interruptibly

    assert call_interruptibly(sum, [1, 2, 3]) == 6
    with pytest.raises(ZeroDivisionError):
        call_interruptibly(lambda: 1 / 0)
    assert not MODEL_CALL_ABANDONED.is_set()



def test_an_impossible_working_size_is_a_setting_error_before_any_photo():
    """--working-size 100000 failed every photo with OpenCV's allocation error (exit 3)."""
    from vesselseg.errors import ConfigError

    with pytest.raises(ConfigError, match="working_size"):
        Segmenter(None, PreprocessConfig(size=64), working_size=100_000)
