"""Self-describing exports and the TensorFlow-free runtime (`metadata`, `runtime`)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")

TOLERANCE = 1e-3
BLOCKER = textwrap.dedent("""
    import sys

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "keras", "tf2onnx", "tf_keras"):
                raise ImportError(f"blocked by the test: {name}")
            return None

    sys.meta_path.insert(0, Blocker())
""")


@pytest.fixture(scope="module")
def run(tiny_run, tmp_path_factory) -> Path:
    """A copy of the tiny run with thresholds for two settings."""
    run = Path(shutil.copytree(tiny_run, tmp_path_factory.mktemp("runtime") / "run",
                               ignore=shutil.ignore_patterns("tensorboard", "backup", "export")))
    record = json.loads((run / "threshold.json").read_text())
    record["threshold"] = 0.41
    record["settings"] = {"flips": {"threshold": 0.37}}
    (run / "threshold.json").write_text(json.dumps(record))
    return run


@pytest.fixture(scope="module")
def exports(run, tmp_path_factory) -> dict[str, Path]:
    from vesselseg.export import export_model

    folder = tmp_path_factory.mktemp("exports")
    return {fmt: export_model(run, fmt, folder / name)
            for fmt, name in (("onnx", "m.onnx"), ("tflite", "m.tflite"))}


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    from vesselseg.datasets import generate_fundus
    from vesselseg.io import write_png

    return write_png(tmp_path_factory.mktemp("photo") / "photo.png",
                     generate_fundus(21, 180).image)


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_an_export_carries_what_reproduces_eval(run, exports, fmt):
    from vesselseg import __version__
    from vesselseg.config import TrainConfig, load_config, to_dict
    from vesselseg.metadata import read_metadata
    from vesselseg.runs import RunFolder

    facts = read_metadata(exports[fmt])
    config = load_config(TrainConfig, run / "config.json")
    assert facts["preprocess"] == to_dict(config.preprocess)
    assert facts["working_size"] == config.preprocess.size
    assert facts["tiling"] == {"window": config.preprocess.size, "overlap": 64,
                               "depth": config.depth}
    assert facts["thresholds"] == {"plain": 0.41, "flips": 0.37}
    assert facts["default_threshold"] == 0.41
    assert facts["model"]["source_sha256"] == RunFolder(run).model_sha256()
    assert facts["model"]["name"] == "run" and facts["format"] == fmt
    assert facts["vesselseg_version"] == __version__
    assert facts["input"]["shape"] == [None, config.preprocess.size, config.preprocess.size, 3]


def test_the_onnx_record_is_a_standard_metadata_property(exports):
    import onnx

    props = {p.key: p.value for p in onnx.load(str(exports["onnx"])).metadata_props}
    assert json.loads(props["vesselseg"])["thresholds"]["plain"] == 0.41


def test_the_savedmodel_record_is_an_assets_file(run, tmp_path):
    from vesselseg.backends import load_runner
    from vesselseg.export import export_model
    from vesselseg.metadata import read_metadata

    path = export_model(run, "savedmodel", tmp_path / "sm")
    assert json.loads((path / "assets" / "vesselseg.json").read_text())["format"] == "savedmodel"
    assert read_metadata(path)["thresholds"]["plain"] == 0.41
    assert load_runner("savedmodel", path).size == read_metadata(path)["tiling"]["window"]


def test_a_file_without_a_record_is_a_clear_error(run, exports, tmp_path):
    import onnx

    from vesselseg.errors import ModelFileError
    from vesselseg.metadata import read_metadata

    bare = onnx.load(str(exports["onnx"]))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(ModelFileError, match="bare.onnx: this onnx export carries no vesselseg "
                                             "metadata.*re-export"):
        read_metadata(tmp_path / "bare.onnx")
    with pytest.raises(ModelFileError, match="a Keras model, not an export"):
        read_metadata(run / "best.keras")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelFileError, match="notes.txt: not an export"):
        read_metadata(tmp_path / "notes.txt")


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_from_export_segments_as_from_run(run, exports, photo, fmt):
    """Same preprocessing, size, threshold per setting and probabilities as the run itself."""
    from vesselseg.inference import Segmenter

    for kwargs in ({}, {"tta": True}, {"working_size": 256}):
        keras = Segmenter.from_run(run, **kwargs)
        exported = Segmenter.from_export(exports[fmt], **kwargs)
        assert exported.threshold == keras.threshold
        assert exported.threshold_source == keras.threshold_source
        assert exported.working_size == keras.working_size
        assert exported.backend == fmt and exported.model_name == keras.model_name
        got, expected = exported.predict(photo), keras.predict(photo)
        assert np.abs(got.probability - expected.probability).max() < TOLERANCE
        assert (got.fov == expected.fov).all()
    assert Segmenter.from_export(exports[fmt], tta=True).threshold == 0.37
    multi = Segmenter.from_export(exports[fmt], scales=(1.0, 1.25))
    assert (multi.threshold, multi.threshold_source) == (0.41, "validation, plain setting")


def test_the_runtime_runs_with_tensorflow_and_keras_absent(run, exports, photo, tmp_path):
    """A fresh process whose every import of tensorflow/keras/tf2onnx fails segments a photo
    from the ONNX export, as the Keras model does."""
    from vesselseg.inference import Segmenter

    script = BLOCKER + textwrap.dedent(f"""
        import numpy as np
        from vesselseg.runtime import load

        segmenter = load({str(exports["onnx"])!r})
        prediction = segmenter.predict({str(photo)!r})
        np.save({str(tmp_path / "p.npy")!r}, prediction.probability)
        heavy = [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")]
        print(segmenter.threshold, segmenter.model_name, heavy)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0.41", "run", "[]"]
    expected = Segmenter.from_run(run).predict(photo).probability
    assert np.abs(np.load(tmp_path / "p.npy") - expected).max() < TOLERANCE


def test_the_blocker_does_block(tmp_path):
    """The test above proves something: the same blocker stops the Keras path."""
    script = BLOCKER + "from vesselseg.inference import Segmenter\nSegmenter.pretrained()\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0 and "blocked by the test" in done.stderr


def test_eval_with_model_infers_the_backend_and_names_the_model(exports, photo, tmp_path,
                                                                capsys):
    from vesselseg.eval import main

    out = tmp_path / "out"
    assert main([str(photo), "--model", str(exports["tflite"]), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["backend"] == "tflite"
    assert summary["settings"]["threshold"] == 0.41
    assert summary["model"] == {"name": "run", "version": summary["model"]["version"],
                                "source": str(exports["tflite"])}
    assert "run," in (out / "results.csv").read_text().splitlines()[1]
    capsys.readouterr()
    assert main([str(photo), "--model", str(exports["onnx"]), "--backend", "tflite",
                 "--out", str(tmp_path / "o2")]) == 2
    assert "is a onnx export, not tflite" in capsys.readouterr().err
    assert main([str(photo), "--model", str(exports["onnx"]), "--run", "pretrained",
                 "--out", str(tmp_path / "o3")]) == 2
    assert "not both" in capsys.readouterr().err


def test_inspect_shows_preprocessing_and_thresholds(exports, run, capsys):
    from vesselseg.inspect import main

    assert main([str(exports["onnx"])]) == 0
    text = capsys.readouterr().out
    for words in ("plain 0.4100 (default)", "flips 0.3700", "enhancement", "clahe_clip",
                  "working size:", "input:", "model:"):
        assert words in text
    assert main([str(exports["tflite"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["thresholds"] == {"plain": 0.41, "flips": 0.37}
    assert main([str(run)]) == 0
    assert "run folder" in capsys.readouterr().out
    assert main([str(run / "config.json")]) == 1
    assert "not an export" in capsys.readouterr().err


def test_inspect_help():
    from vesselseg.__main__ import COMMANDS

    assert "inspect" in COMMANDS
    done = subprocess.run([sys.executable, "-m", "vesselseg", "inspect", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--json" in done.stdout


def test_int8_export_is_published_only_within_the_f1_bar(run, tmp_path):
    """Calibrated on the run's training images, checked on its validation images: a bar the
    measured change exceeds refuses the export and writes nothing."""
    from vesselseg.export import ExportVerificationError, export_run
    from vesselseg.metadata import read_metadata

    with pytest.raises(ExportVerificationError, match="int8 export refused: pooled F1.*change"):
        export_run(run, "onnx", tmp_path / "refused.onnx", precision="int8",
                   max_f1_change=-1.0)
    assert list(tmp_path.iterdir()) == []
    result = export_run(run, "onnx", tmp_path / "m.int8.onnx", precision="int8",
                        max_f1_change=1.0)
    facts = read_metadata(result.path)
    assert facts["precision"] == "int8" and result.int8 == facts["int8"]
    assert facts["int8"]["check"] == "the run's validation images" and facts["int8"]["images"]
    assert facts["int8"]["f1_change"] == pytest.approx(facts["int8"]["f1_int8"]
                                                       - facts["int8"]["f1_float32"])
    import onnx

    ops = {node.op_type for node in onnx.load(str(result.path)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops


def test_int8_needs_calibration_photos_it_can_find(run, tmp_path):
    from vesselseg.errors import ConfigError, DatasetError
    from vesselseg.export import ExportError, export_run

    with pytest.raises(ExportError, match="int8 exports are ONNX only"):
        export_run(run, "tflite", tmp_path / "m.tflite", precision="int8")
    with pytest.raises(DatasetError, match="nothing: no such folder"):
        export_run(run, "onnx", tmp_path / "m.onnx", precision="int8",
                   calibration=tmp_path / "nothing")
    with pytest.raises(ConfigError, match="DATASET=FOLDER"):
        export_run(run, "onnx", tmp_path / "m.onnx", precision="int8", check="drive")


def test_default_exports_of_the_shipped_model_stay_out_of_the_package(tmp_path, monkeypatch):
    from vesselseg.export import default_export_path
    from vesselseg.runs import PRETRAINED_DIR

    monkeypatch.setenv("VESSELSEG_CACHE", str(tmp_path / "cache"))
    for precision, name in (("float32", "model.onnx"), ("int8", "model.int8.onnx")):
        path = default_export_path("pretrained", "onnx", precision)
        assert path.name == name and path.is_relative_to(tmp_path / "cache")
        assert not path.resolve().is_relative_to(PRETRAINED_DIR)


def test_an_export_is_named_for_its_format(run, tmp_path):
    from vesselseg.export import ExportError, export_run

    with pytest.raises(ExportError, match=r"model.bin: name a onnx export \*.onnx"):
        export_run(run, "onnx", tmp_path / "model.bin")
    assert list(tmp_path.iterdir()) == []
