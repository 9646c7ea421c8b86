"""Threshold calibration: chosen on validation images, recorded beside the one it replaces, one
per inference setting; refused for unfinished runs, other images and the shipped model."""
from __future__ import annotations

import json

from vesselseg.calibrate import main
from vesselseg.config import TrainConfig, load_config


def test_calibrate_keeps_the_threshold_it_replaces(tiny_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    # a run from before the rule changed: another threshold, chosen on pooled pixels
    before = {**json.loads((run / "threshold.json").read_text()), "threshold": 0.123,
              "how": "pooled best-F1 threshold"}
    (run / "threshold.json").write_text(json.dumps(before))
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "threshold": 0.123}))
    assert main([str(run)]) == 0
    after = json.loads((run / "threshold.json").read_text())
    assert after["replaced"] == before and after["threshold"] != 0.123
    assert "each image weighing the same" in after["how"]
    assert json.loads((run / "status.json").read_text())["threshold"] == after["threshold"]
    assert f"threshold {after['threshold']:.3f}" in capsys.readouterr().out


def test_calibrate_refuses_other_validation_images(tiny_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    record = json.loads((run / "threshold.json").read_text())
    (run / "threshold.json").write_text(json.dumps({**record, "validation_images": ["other"]}))
    assert main([str(run)]) != 0
    assert "do not hold the validation images" in capsys.readouterr().err
    assert json.loads((run / "threshold.json").read_text())["validation_images"] == ["other"]


def test_calibrate_adds_a_threshold_for_an_averaging_setting(tiny_run, tmp_path, capsys):
    """--tta / --scales choose a threshold for that setting beside the plain one, which stays;
    a Segmenter of that setting then uses it, and a later plain calibration keeps it."""
    import shutil

    from vesselseg.inference import Segmenter

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    plain = json.loads((run / "threshold.json").read_text())
    record = {**plain, "threshold": 0.123}
    (run / "threshold.json").write_text(json.dumps(record))
    assert main([str(run), "--tta", "--scales", "1,1.5",
                 "--data", *load_config(TrainConfig, run / "config.json").data]) == 0
    assert "flips+scales=1,1.5" in capsys.readouterr().out
    after = json.loads((run / "threshold.json").read_text())
    assert after["threshold"] == 0.123  # the plain setting's threshold is untouched
    chosen = after["settings"]["flips+scales=1,1.5"]
    assert 0.0 <= chosen["threshold"] <= 1.0 and chosen["working_size"] == 128
    averaged = Segmenter.from_run(run, tta=True, scales=(1.0, 1.5))
    assert averaged.threshold == chosen["threshold"] and averaged.threshold_source == "validation"
    flips_only = Segmenter.from_run(run, tta=True)
    assert flips_only.threshold == 0.123
    assert flips_only.threshold_source == "validation, plain setting"
    assert main([str(run)]) == 0
    assert json.loads((run / "threshold.json").read_text())["settings"] == after["settings"]


def test_calibrate_refuses_an_unfinished_run(tiny_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "state": "running"}))
    assert main([str(run)]) != 0
    assert "not finished" in capsys.readouterr().err


def test_calibrate_refuses_the_shipped_model(capsys):
    assert main(["pretrained"]) != 0
    assert "part of the package" in capsys.readouterr().err


def test_calibrate_help_and_missing_run(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 1
    assert "nope: run folder does not exist" in capsys.readouterr().err
