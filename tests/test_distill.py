"""Distillation: a preprocessed folder whose training targets mix in a teacher's map."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from experiments.distill import RECORD, distill_folder, main, teacher_target
from vesselseg.errors import ConfigError, DatasetError
from vesselseg.inference import Segmenter
from vesselseg.preprocess import MANIFEST, load_manifest, load_preprocess_config
from vesselseg.transforms import Geometry


def png(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def test_teacher_target_mixes_the_resampled_teacher_with_the_coverage_inside_the_fov():
    box = Geometry(8, 8, 0, 0, 8, 8)
    teacher = np.zeros((8, 8), np.float32)
    teacher[:, :2] = 1.0  # shrinks 2x onto model column 0, fully covered
    coverage = np.zeros((4, 4), np.uint8)
    coverage[:, 1] = 255
    fov = np.ones((4, 4), bool)
    fov[3] = False
    target = teacher_target(teacher, coverage, fov, box, mix=0.25)
    np.testing.assert_array_equal(target[:3, 0], 64)  # 0.25 x 1 -> 63.75, rounded
    np.testing.assert_array_equal(target[:3, 1], 191)  # 0.75 x 1
    assert not target[3].any() and not target[:, 2:].any()
    only_teacher = teacher_target(teacher, coverage, fov, box, mix=1.0)
    np.testing.assert_array_equal(only_teacher[:3, :2], [[255, 0]] * 3)


@pytest.fixture(scope="module")
def teacher(tiny_run):
    return Segmenter.from_run(tiny_run, threshold=0.5)


def test_only_training_targets_change_and_the_copy_is_a_preprocessed_folder(
        synthetic_preprocessed, teacher, tmp_path):
    out = tmp_path / "distilled"
    report = distill_folder(synthetic_preprocessed, out, teacher, mix=0.5, progress=False)
    source, copy = load_manifest(synthetic_preprocessed), load_manifest(out)
    assert report.distilled == int((source["split"] == "train").sum()) > 0
    assert report.copied == len(source) - report.distilled
    pd.testing.assert_frame_equal(pd.read_csv(synthetic_preprocessed / MANIFEST),
                                  pd.read_csv(out / MANIFEST))
    assert load_preprocess_config(out) == load_preprocess_config(synthetic_preprocessed)
    changed = 0
    for before, after in zip(source.itertuples(), copy.itertuples()):
        np.testing.assert_array_equal(png(before.image), png(after.image))
        old, new = png(before.vessels), png(after.vessels)
        if before.split != "train":
            np.testing.assert_array_equal(old, new)  # thresholds and figures: annotation only
        else:
            assert not new[png(after.fov) < 128].any()
            changed += not np.array_equal(old, new)
    assert changed == report.distilled
    record = json.loads((out / RECORD).read_text())
    assert record["mix"] == 0.5 and record["distilled_rows"] == report.distilled
    assert not (tmp_path / "distilled.part").exists()


def test_refuses_an_existing_output_and_a_bad_mix(synthetic_preprocessed, teacher, tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(DatasetError, match="already exists"):
        distill_folder(synthetic_preprocessed, tmp_path / "taken", teacher, progress=False)
    with pytest.raises(ConfigError, match="mix"):
        distill_folder(synthetic_preprocessed, tmp_path / "new", teacher, mix=0.0,
                       progress=False)
    assert not (tmp_path / "new").exists()


def test_a_failure_leaves_no_half_written_folder(synthetic_preprocessed, tmp_path):
    class Broken:
        source, tta, scales = "broken", False, (1.0,)

        def predict(self, image, fov):
            raise RuntimeError("teacher failed")

    with pytest.raises(RuntimeError):
        distill_folder(synthetic_preprocessed, tmp_path / "out", Broken(), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_command_line_distils_with_a_run_as_teacher(synthetic_preprocessed, tiny_run, tmp_path,
                                                    capsys):
    out = tmp_path / "cli"
    assert main(["--data", str(synthetic_preprocessed), "--out", str(out), "--run",
                 str(tiny_run), "--tta", "--mix", "0.3"]) == 0
    assert "training targets distilled" in capsys.readouterr().out
    record = json.loads((out / RECORD).read_text())
    assert record["tta"] and record["mix"] == 0.3
    assert main(["--data", str(synthetic_preprocessed), "--out", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err


def test_refuses_a_folder_with_offline_augmented_copies(synthetic_preprocessed, teacher,
                                                        tmp_path):
    import shutil

    folder = tmp_path / "augmented"
    shutil.copytree(synthetic_preprocessed, folder)
    manifest = pd.read_csv(folder / MANIFEST, dtype={"augment_of": str})
    manifest.loc[0, "augment_of"] = manifest.loc[1, "id"]
    manifest.to_csv(folder / MANIFEST, index=False)
    with pytest.raises(DatasetError, match="without --augment"):
        distill_folder(folder, tmp_path / "out", teacher, progress=False)
