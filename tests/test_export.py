"""Model export (SavedModel, TFLite, ONNX) and the onnx / tflite inference backends."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")

TOLERANCE = 1e-3


def _copy_run(run: Path, dest: Path) -> Path:
    """A private copy of the shared tiny run (exports write into the run folder)."""
    return Path(shutil.copytree(run, dest, ignore=shutil.ignore_patterns(
        "tensorboard", "backup", "tests", "export")))


@pytest.fixture(scope="module")
def run(tiny_run, tmp_path_factory) -> Path:
    return _copy_run(tiny_run, tmp_path_factory.mktemp("export") / "run")


@pytest.fixture(scope="module")
def reference(run):
    """(input batch of 3 at the training size, Keras probabilities [3, S, S, 1])."""
    from vesselseg.backends import load_keras_model
    from vesselseg.config import TrainConfig, load_config
    from vesselseg.export import verification_inputs

    size = load_config(TrainConfig, run / "config.json").preprocess.size
    fundus = verification_inputs(size, seed=7)["synthetic fundus"]
    noise = np.random.default_rng(1).random((2, size, size, 3), dtype=np.float32)
    batch = np.concatenate([fundus, noise])
    model = load_keras_model(run / "best.keras")
    return batch, np.asarray(model(batch, training=False), dtype=np.float32)


def _checked(result, run: Path, name: str):
    """The result of a default-location export, after checking what it wrote."""
    assert result.path == run / "export" / name and result.path.exists()
    assert result.max_abs_diff < TOLERANCE
    assert set(result.diffs) == {"random batch", "synthetic fundus"}
    from vesselseg.metadata import read_metadata

    facts = read_metadata(result.path)  # the artifact describes itself: no sidecar
    assert facts["input"]["shape"] == [None, result.size, result.size, 3]
    assert not (run / "export" / f"{name}.json").exists()
    assert not [p for p in (run / "export").iterdir() if p.name.endswith(".part")]
    return result


def test_savedmodel_round_trip(run, reference):
    import tensorflow as tf

    from vesselseg.export import export_run

    result = _checked(export_run(run, "savedmodel"), run, "savedmodel")
    batch, expected = reference
    loaded = tf.saved_model.load(str(result.path))
    got = np.asarray(loaded.serve(batch))
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < TOLERANCE


def test_tflite_round_trip(run, reference):
    from vesselseg.export import export_run

    result = _checked(export_run(run, "tflite"), run, "model.tflite")
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter  # noqa: N806
    interpreter = Interpreter(model_path=str(result.path))
    detail = interpreter.get_input_details()[0]
    assert list(detail["shape_signature"]) == [-1, result.size, result.size, 3]
    batch, expected = reference
    interpreter.resize_tensor_input(detail["index"], list(batch.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], batch)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < TOLERANCE


def test_onnx_round_trip(run, reference):
    import onnxruntime as ort

    from vesselseg.backends import load_runner
    from vesselseg.errors import ModelFileError
    from vesselseg.export import export_run

    result = _checked(export_run(run, "onnx"), run, "model.onnx")
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.shape[1:] == [result.size, result.size, 3] and not isinstance(inp.shape[0], int)
    batch, expected = reference
    got = session.run(None, {inp.name: batch})[0]
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < TOLERANCE
    with pytest.raises(ModelFileError, match=r"takes \[N, 128, 128, 3\] inputs"):
        load_runner("onnx", result.path)(np.zeros((1, 64, 64, 3), np.float32))


def test_existing_export_is_never_overwritten_without_flag(run, tmp_path, capsys):
    from vesselseg.export import ExportExistsError, export_model, main

    out = tmp_path / "exports" / "unet.onnx"
    assert main(["--run", str(run), "--format", "onnx", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "max abs diff" in printed and str(out) in printed
    before = out.read_bytes()
    assert main(["--run", str(run), "--format", "onnx", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err
    assert out.read_bytes() == before
    assert main(["--run", str(run), "--format", "onnx", "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["unet.onnx"]
    folder = tmp_path / "sm"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(ExportExistsError, match="already exists"):
        export_model(run, "savedmodel", folder)
    assert (folder / "keep.txt").read_text() == "mine"


def test_unfaithful_export_raises_and_writes_nothing(run, tmp_path, monkeypatch):
    from vesselseg import export

    monkeypatch.setattr(export, "compare_with_keras", lambda *args: {"random batch": 0.25})
    out = tmp_path / "bad" / "model.onnx"
    with pytest.raises(export.ExportVerificationError, match="max abs probability diff 0.25"):
        export.export_model(run, "onnx", out)
    assert list(out.parent.iterdir()) == []


def test_cli_help():
    done = subprocess.run([sys.executable, "-m", "vesselseg.export", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    for word in ("--run", "--format", "savedmodel", "tflite", "onnx", "--out", "--overwrite"):
        assert word in done.stdout


def test_segmenter_onnx_backend_agrees_with_keras(tiny_run, tmp_path):
    from vesselseg.datasets import generate_fundus
    from vesselseg.errors import RunFolderError
    from vesselseg.export import export_model
    from vesselseg.inference import Segmenter

    run = _copy_run(tiny_run, tmp_path / "run")
    photo = generate_fundus(11, 200).image  # native size, not the training size
    keras_prediction = Segmenter.from_run(run).predict(photo)
    with pytest.raises(RunFolderError, match="no onnx export.*vesselseg export --run"):
        Segmenter.from_run(run, backend="onnx")  # inference never exports on its own
    assert not (run / "export").exists()
    export_model(run, "onnx")
    segmenter = Segmenter.from_run(run, backend="onnx")
    assert segmenter.backend == "onnx" and segmenter.model is None
    prediction = segmenter.predict(photo)
    assert prediction.probability.shape == photo.shape[:2]
    assert np.abs(prediction.probability - keras_prediction.probability).max() < TOLERANCE
    tta = Segmenter.from_run(run, backend="onnx", tta=True).predict(photo)
    keras_tta = Segmenter.from_run(run, tta=True).predict(photo)
    assert np.abs(tta.probability - keras_tta.probability).max() < TOLERANCE
    tiled = Segmenter.from_run(run, backend="onnx", working_size=256).predict(photo)
    keras_tiled = Segmenter.from_run(run, working_size=256).predict(photo)
    assert np.abs(tiled.probability - keras_tiled.probability).max() < TOLERANCE


def test_eval_cli_with_tflite_backend(tiny_run, tmp_path):
    from vesselseg.datasets import generate_fundus
    from vesselseg.eval import main
    from vesselseg.export import main as export_main
    from vesselseg.io import write_png

    run = _copy_run(tiny_run, tmp_path / "run")
    assert export_main(["--run", str(run), "--format", "tflite"]) == 0
    assert (run / "export" / "model.tflite").exists()
    image = write_png(tmp_path / "photo.png", generate_fundus(3, 160).image)
    out = tmp_path / "out"
    assert main([str(image), "--run", str(run), "--backend", "tflite", "--out", str(out),
                 "--json"]) == 0
    assert (out / "photo_probability.png").exists()
    assert json.loads((out / "summary.json").read_text())["settings"]["backend"] == "tflite"


def test_stale_export_is_refused(tiny_run, tmp_path):
    from vesselseg.errors import ModelLoadError
    from vesselseg.export import export_model
    from vesselseg.inference import Segmenter

    run = _copy_run(tiny_run, tmp_path / "run")
    from vesselseg.metadata import embed_onnx, read_metadata

    path = export_model(run, "onnx")
    facts = read_metadata(path)
    embed_onnx(path, {**facts, "model": {**facts["model"], "source_sha256": "0" * 64}})
    with pytest.raises(ModelLoadError, match="stale.*--overwrite"):
        Segmenter.from_run(run, backend="onnx")


def test_unknown_format_and_backend_are_clear_errors(run, capsys):
    from vesselseg.backends import load_runner
    from vesselseg.errors import ConfigError, ModelFileError, VesselsegError
    from vesselseg.eval import main as eval_main
    from vesselseg.export import ExportError, export_model
    from vesselseg.export import main as export_main
    from vesselseg.inference import Segmenter
    from vesselseg.test import build_parser as test_parser

    with pytest.raises(ExportError, match="unknown 'pb'; valid formats: savedmodel, tflite, onnx"):
        export_model(run, "pb")
    with pytest.raises(ModelFileError, match="unknown 'pb'"):
        load_runner("pb", run / "best.keras")
    with pytest.raises(ConfigError, match="unknown 'torch'; valid backends: keras, onnx, tflite"):
        Segmenter.from_run(run, backend="torch")
    assert issubclass(ExportError, VesselsegError)
    for cli in (lambda: export_main(["--run", str(run), "--format", "pb"]),
                lambda: eval_main(["x.png", "--backend", "torch"])):
        with pytest.raises(SystemExit) as stop:
            cli()
        assert stop.value.code == 2
        assert "invalid choice" in capsys.readouterr().err
    args = test_parser().parse_args(["--data", "d", "--backend", "onnx"])
    assert args.backend == "onnx"
    assert export_main(["--run", str(run / "missing"), "--format", "onnx"]) == 1
    assert "run folder does not exist" in capsys.readouterr().err


def test_a_run_with_a_working_size_is_exported_at_that_size(tiny_run, tmp_path):
    """An export takes the run's working size whole, as the Keras model does, so switching the
    backend changes neither the figures nor the amount of work."""
    from vesselseg.datasets import generate_fundus
    from vesselseg.errors import ConfigError, ModelLoadError
    from vesselseg.export import export_model
    from vesselseg.inference import Segmenter

    run = _copy_run(tiny_run, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    working = config["preprocess"]["size"] + 32
    config["working_size"] = working
    (run / "config.json").write_text(json.dumps(config))
    photo = generate_fundus(5, 240).image
    keras_segmenter = Segmenter.from_run(run)
    export_model(run, "onnx")
    onnx_segmenter = Segmenter.from_run(run, backend="onnx")
    assert onnx_segmenter.window == working and onnx_segmenter.runs_whole
    assert keras_segmenter.runs_whole
    difference = np.abs(onnx_segmenter.predict(photo).probability
                        - keras_segmenter.predict(photo).probability).max()
    assert difference < TOLERANCE
    with pytest.raises(ConfigError, match="export's fixed input size .*--backend keras"):
        Segmenter.from_run(run, backend="onnx", working_size=working - 32)
    # the run's working size changed after the export: the export is stale, not tiled
    config["working_size"] = 0
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="stale: it takes .* re-export"):
        Segmenter.from_run(run, backend="onnx")


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_a_run_trained_in_bfloat16_exports_a_float32_graph(tiny_run, tmp_path, fmt):
    """Converters and ONNX Runtime take no bfloat16 graphs; a run saved under the mixed
    bfloat16 policy (as the shipped model is) still exports, in float32, and matches Keras."""
    from vesselseg.backends import load_keras_model, load_runner
    from vesselseg.config import TrainConfig, load_config
    from vesselseg.devices import dtype_policy
    from vesselseg.export import export_run, verification_inputs
    from vesselseg.model import get_model, trained_policy

    run = _copy_run(tiny_run, tmp_path / "run")
    config = load_config(TrainConfig, run / "config.json")
    trained = load_keras_model(run / "best.keras")
    with dtype_policy("mixed_bfloat16"):
        mixed = get_model(config.architecture, base_filters=config.base_filters,
                          depth=config.depth, batch_norm=config.batch_norm)
    mixed.set_weights(trained.get_weights())
    mixed.save(run / "best.keras")
    assert trained_policy(load_keras_model(run / "best.keras")) == "mixed_bfloat16"
    result = export_run(run, fmt)
    assert result.max_abs_diff < TOLERANCE
    batch = verification_inputs(config.preprocess.size, seed=3)["synthetic fundus"]
    expected = np.asarray(trained(batch, training=False), dtype=np.float32)
    got = load_runner(fmt, result.path)(batch)
    assert np.abs(got.reshape(expected.shape) - expected).max() < TOLERANCE


def test_an_export_is_one_artifact_with_nothing_beside_it(run, tmp_path):
    """The record lives inside the file: --out RUN/config no longer writes a sidecar over the
    run's config.json, and copying the one file carries everything."""
    from vesselseg.export import main

    config = (run / "config.json").read_bytes()
    out = tmp_path / "single"
    out.mkdir()
    assert main(["--run", str(run), "--format", "tflite", "--out", str(out / "m.tflite")]) == 0
    assert [p.name for p in out.iterdir()] == ["m.tflite"]
    assert (run / "config.json").read_bytes() == config
