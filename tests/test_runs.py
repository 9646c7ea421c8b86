"""Run folders: names, status, resume, fingerprints, thresholds, and where outputs go."""
from __future__ import annotations

import json

import pytest

from vesselseg.config import TrainConfig
from vesselseg.errors import ModelLoadError, RunFolderError
from vesselseg.runs import (
    PRETRAINED_DIR,
    RunFolder,
    config_fingerprint,
    user_cache_dir,
)


def _fake_run(path, state="finished", threshold=None):
    run = RunFolder(path)
    path.mkdir(parents=True)
    run.save_config(TrainConfig(data=["d"]))
    run.model_path.write_bytes(b"weights")
    run.update_status(state=state)
    if threshold is not None:
        run.write_threshold_record(threshold)
    return run


def test_pretrained_names_the_shipped_model_and_is_read_only():
    shipped = RunFolder.named("pretrained")
    assert shipped.path == PRETRAINED_DIR and shipped.is_shipped and shipped.is_finished
    assert RunFolder.existing("pretrained").config().working_size == 0
    export = shipped.export_path("onnx")
    assert PRETRAINED_DIR not in export.parents  # exports of the shipped model: user cache
    assert export.parent.parent == user_cache_dir()


def test_missing_and_incomplete_folders_are_clear_errors(tmp_path):
    with pytest.raises(RunFolderError, match="nope: run folder does not exist"):
        RunFolder.existing(tmp_path / "nope")
    with pytest.raises(RunFolderError, match="not a vesselseg run folder \\(no best.keras\\)"):
        RunFolder.existing(tmp_path)
    assert issubclass(RunFolderError, ModelLoadError)


def test_status_and_finished(tmp_path):
    run = _fake_run(tmp_path / "run", state="running")
    assert run.state == "running" and not run.is_finished
    with pytest.raises(RunFolderError, match="says the run is running, not finished"):
        run.require_finished()
    run.update_status(state="finished", epochs=3)
    assert run.is_finished and run.status()["epochs"] == 3
    assert run.require_finished() == run
    run.status_path.write_text("{torn")
    with pytest.raises(RunFolderError, match="status.json: unreadable"):
        run.status()


@pytest.mark.parametrize("text", ["[]", '"finished"', "null", "3", "\ufeff[1]"])
@pytest.mark.parametrize("name", ["status.json", "threshold.json"])
def test_a_run_file_holding_another_json_type_is_named(name, text, tmp_path):
    """status.json or threshold.json holding a list, a string or null was an AttributeError
    traceback in calibrate, compare and eval (`.get` of a list); now an error naming the file."""
    run = _fake_run(tmp_path / "run", threshold={"threshold": 0.4})
    (run.path / name).write_text(text, encoding="utf-8")
    with pytest.raises(RunFolderError, match=f"{name}: expected a JSON object"):
        run.status() if name == "status.json" else run.threshold_record()
    with pytest.raises(RunFolderError, match=name):
        run.require_finished() if name == "status.json" else run.threshold()


def test_run_files_with_a_utf8_byte_order_mark_are_read(tmp_path):
    """config.json is read with or without a BOM (an editor's); status.json and
    threshold.json alike."""
    run = _fake_run(tmp_path / "run", threshold={"threshold": 0.4})
    for path in (run.status_path, run.threshold_path):
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert run.is_finished and run.threshold() == (0.4, "validation")


def test_thresholds_per_setting(tmp_path):
    run = _fake_run(tmp_path / "run")
    assert run.threshold() == (0.5, "default 0.5 (the run has no threshold.json)")
    run.write_threshold_record({"threshold": 0.4, "settings": {"flips": {"threshold": 0.3}}})
    assert run.threshold() == (0.4, "validation")
    assert run.threshold("flips") == (0.3, "validation")
    assert run.threshold("scales=1,1.25") == (0.4, "validation, plain setting")


def test_an_unfinished_run_of_the_same_config_is_found_to_resume(tmp_path):
    config = TrainConfig(data=["d"], runs_dir=str(tmp_path))
    run = RunFolder.create(config)
    assert run.path.parent == tmp_path and run.path.name.endswith("_unet")
    run.update_status(state="running", fingerprint=config_fingerprint(config))
    assert RunFolder.find_unfinished(config) == run
    assert RunFolder.find_unfinished(TrainConfig(data=["other"], runs_dir=str(tmp_path))) is None
    run.update_status(state="finished")
    assert RunFolder.find_unfinished(config) is None
    assert RunFolder.create(config) != run  # a new folder, never a reused one


def test_fingerprint_ignores_where_runs_go_and_reads_old_comma_joined_data():
    assert config_fingerprint(TrainConfig(data=["a", "b"], runs_dir="x")) == \
        config_fingerprint(TrainConfig(data="a,b", runs_dir="y"))
    assert config_fingerprint(TrainConfig(data=["a"])) != config_fingerprint(
        TrainConfig(data=["b"]))


def test_output_folders_go_inside_a_run_or_outside_the_package(tmp_path):
    run = _fake_run(tmp_path / "run")
    inside = run.output_folder(RunFolder.TESTS, "test", tmp_path / "elsewhere")
    assert inside.parent == run.path / "tests"
    outside = RunFolder.named("pretrained").output_folder("tests", "x", tmp_path / "elsewhere")
    assert outside.parent == tmp_path / "elsewhere"
    assert json.loads(run.config_path.read_text())["data"] == ["d"]


@pytest.mark.parametrize("record", ['"0.4"', "[0.4]", '{"threshold": "high"}', "{}",
                                    '{"threshold": NaN}', '{"threshold": 5}',
                                    '{"threshold": 0.4, "settings": []}',
                                    '{"threshold": 0.4, "settings": {"flips": {}}}'])
def test_a_malformed_threshold_file_is_an_error_naming_it(tmp_path, record):
    run = _fake_run(tmp_path / "run")
    run.threshold_path.write_text(record)
    with pytest.raises(RunFolderError, match="threshold.json"):
        run.threshold("flips")


@pytest.mark.parametrize("key, value, built", [("depth", 3, "2"), ("base_filters", 8, "4"),
                                               ("architecture", "wnet", "'unet'"),
                                               ("batch_norm", False, "True"),
                                               ("dropout", 0.2, "0.0")])
def test_a_config_edited_after_training_is_refused_naming_the_file_and_key(
        key, value, built, tiny_run, tmp_path):
    """config.json describing another network than best.keras (an edited depth...) would build
    that network around the weights: loading the run names the file and the key instead."""
    import shutil

    from vesselseg.inference import Segmenter

    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    for name in (RunFolder.MODEL, RunFolder.CONFIG, RunFolder.STATUS, RunFolder.THRESHOLD):
        shutil.copy(tiny_run / name, run.path / name)
    assert run.config().depth == 2  # as trained: accepted
    config = json.loads(run.config_path.read_text())
    run.config_path.write_text(json.dumps({**config, key: value}))
    expected = f"{run.config_path}: {key} is {value!r} but the model was built with {built}"
    with pytest.raises(RunFolderError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        run.config()
    with pytest.raises(RunFolderError, match="does not describe the run's model"):
        Segmenter.from_run(run)
