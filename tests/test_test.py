import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from vesselseg.evaluation import CALIBRES, METRIC_NAMES
from vesselseg.inference import Segmenter
from vesselseg.test import items_from_manifest, main, run_test


def test_metrics_csv_summary_and_figures_on_synthetic(tiny_run, synthetic_preprocessed, tmp_path):
    out = tmp_path / "result"
    report = run_test(Segmenter.from_run(tiny_run), items_from_manifest(synthetic_preprocessed),
                      out, progress=False)
    table = pd.read_csv(out / "metrics.csv")
    test_ids = [i.id for i in items_from_manifest(synthetic_preprocessed)]
    assert list(table["id"]) == [*test_ids, "pooled", "mean", "std"]
    assert list(table.columns) == ["id", *METRIC_NAMES, "threshold"]
    summary = json.loads((out / "summary.json").read_text())
    assert "inside the FOV" in summary["protocol"] and summary["images"] == len(test_ids)
    assert summary["pooled"]["f1"] == pytest.approx(report.pooled["f1"])
    assert summary["compute_precision"] == "float32"  # the tiny run as trained
    fitted = summary["fitted_threshold"]
    assert (fitted["threshold"], fitted["f1"]) == pytest.approx(report.fitted_threshold)
    assert 0 < fitted["threshold"] < 1 and "never test images" in fitted["how"]
    calibre = pd.read_csv(out / "calibre.csv")
    assert list(calibre["calibre"]) == list(CALIBRES)
    assert calibre["auc_roc_loss"].sum() == pytest.approx(1 - report.pooled["auc_roc"], abs=1e-5)
    assert [r["vessel_pixels"] for r in summary["calibre"]["rows"]] == list(
        calibre["vessel_pixels"])
    for item_id in test_ids:
        for folder in ("probabilities", "masks", "panels"):
            assert (out / folder / f"{item_id}.png").exists()
    assert (out / "roc_pr.png").stat().st_size > 10_000
    assert not list(out.rglob("*.part"))


def test_cli_on_twenty_real_drive_test_images(tiny_run, drive_dir, capsys):
    code = main(["--run", str(tiny_run), "--dataset", "drive", "--source", str(drive_dir),
                 "--no-images"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "pooled" in printed and "inside the FOV" in printed
    assert "fitted on these images: threshold" in printed
    assert "only if these are validation" in printed
    assert "by reference vessel width: 1-2 px: " in printed
    (result,) = list((tiny_run / "tests").iterdir())
    table = pd.read_csv(result / "metrics.csv")
    assert len(table) == 23 and table["id"].iloc[20] == "pooled"
    assert np.isfinite(table.iloc[20:][list(METRIC_NAMES)].to_numpy()).all()
    summary = json.loads((result / "summary.json").read_text())
    assert summary["fov"] == ["official"] and summary["images"] == 20


def test_missing_run_folder_exits_non_zero(tmp_path, synthetic_preprocessed, capsys):
    assert main(["--run", str(tmp_path / "missing"), "--data", str(synthetic_preprocessed)]) == 1
    assert "missing" in capsys.readouterr().err


def test_missing_annotation_folder(tiny_run, tmp_path, capsys):
    (tmp_path / "images").mkdir()
    from vesselseg.datasets import generate_fundus
    from vesselseg.io import write_png

    write_png(tmp_path / "images" / "a.png", generate_fundus(0, 64).image)
    code = main(["--run", str(tiny_run), "--dataset", "folder", "--source", str(tmp_path),
                 "--split", "train"])
    assert code == 1 and "masks" in capsys.readouterr().err


def test_help():
    result = subprocess.run([sys.executable, "-m", "vesselseg.test", "--help"],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "--tta" in result.stdout and "--threshold" in result.stdout


def test_a_manifest_id_that_is_a_path_is_refused(tmp_path):
    """Outputs are named after ids: an id like ../../x would write outside --out."""
    import pandas as pd

    from vesselseg.errors import DatasetError
    from vesselseg.test import items_from_manifest

    pd.DataFrame({"id": ["../../x"], "split": ["test"], "augment_of": [""], "image": ["i.png"],
                  "vessels": ["v.png"], "fov": ["f.png"], "native_image": ["a.png"],
                  "native_annotation": ["b.png"], "native_fov": [""],
                  "fov_source": ["estimated"]}).to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(DatasetError, match=r"manifest.csv:2: id '../../x' is not a plain file"):
        items_from_manifest(tmp_path)


def test_morphology_csv_puts_prediction_beside_annotation(tiny_run, synthetic_preprocessed,
                                                          tmp_path):
    from vesselseg.io import read_mask
    from vesselseg.morphology import measure

    out = tmp_path / "result"
    items = items_from_manifest(synthetic_preprocessed)
    run_test(Segmenter.from_run(tiny_run), items, out, progress=False)
    table = pd.read_csv(out / "morphology.csv")
    assert set(table["id"]) == {item.id for item in items}
    item = items[0]
    truth = read_mask(item.annotation)
    fov = read_mask(item.fov) if item.fov else None
    expected = measure(truth & fov, fov) if fov is not None else None
    rows = table[(table["id"] == item.id)].set_index("measurement")
    if expected is not None:
        for name in ("vessel_area_density", "fd_mask", "width_median_px", "segments"):
            assert rows.loc[name, "annotation"] == pytest.approx(expected[name], rel=1e-4)
    assert rows.loc["fd_mask", "difference"] == pytest.approx(
        rows.loc["fd_mask", "prediction"] - rows.loc["fd_mask", "annotation"], abs=1e-5)


def test_pooled_metrics_and_panels_reach_tensorboard(tiny_run, synthetic_preprocessed,
                                                     tmp_path):
    import tensorflow as tf

    logdir = tmp_path / "tb"
    report = run_test(Segmenter.from_run(tiny_run), items_from_manifest(synthetic_preprocessed),
                      tmp_path / "result", progress=False, morphology=False,
                      tensorboard=logdir, step=7)
    scalars, images = {}, 0
    for event_file in logdir.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            for value in event.summary.value:
                if value.tag.startswith("test/panels"):
                    images += 1
                elif value.tag.startswith("test/"):
                    scalars[value.tag] = (event.step, float(tf.make_ndarray(value.tensor)))
    assert scalars["test/f1"] == (7, pytest.approx(report.pooled["f1"], rel=1e-6))
    assert "test/auc_roc" in scalars and images == 1


def test_overwrite_replaces_only_an_earlier_result_and_only_when_complete(
        tiny_run, synthetic_preprocessed, tmp_path, capsys):
    out = tmp_path / "result"
    args = ["--run", str(tiny_run), "--data", str(synthetic_preprocessed), "--out", str(out),
            "--no-images", "--no-morphology", "-q"]
    assert main(args) == 0
    first = (out / "summary.json").read_text()
    assert main(args) == 1 and "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["pooled"]["f1"] == pytest.approx(json.loads(first)["pooled"]["f1"])
    assert (out / "summary.json").exists() and len(list(tmp_path.iterdir())) == 1
    other = tmp_path / "photos"
    other.mkdir()
    (other / "mine.txt").write_text("not a test result")
    assert main([*args[:4], "--out", str(other), "--overwrite"]) == 1
    assert "no earlier test result" in capsys.readouterr().err
    assert (other / "mine.txt").exists()


@pytest.mark.parametrize("where", ["source", "inside-source", "photos"])
def test_out_among_the_inputs_is_refused(where, tiny_run, tmp_path, capsys):
    """`--out` equal to the raw --source with --overwrite (a summary.json there) used to replace
    the whole dataset by the test result; --out inside the data mixed results with it."""
    from vesselseg.datasets import write_synthetic_dataset

    source = write_synthetic_dataset(tmp_path / "source", count=4, size=64, seed=1)
    (source / "summary.json").write_text("{}")
    before = sorted(str(p.relative_to(source)) for p in source.rglob("*"))
    out = {"source": source, "inside-source": source / "results",
           "photos": source / "images"}[where]
    code = main(["--run", str(tiny_run), "--dataset", "folder", "--source", str(source),
                 "--out", str(out), "--overwrite", "--no-images", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "error: --out" in err and "input folder" in err, err
    assert sorted(str(p.relative_to(source)) for p in source.rglob("*")) == before


def test_overwrite_replaces_only_a_folder_holding_a_test_result_alone(
        tiny_run, synthetic_preprocessed, tmp_path, capsys):
    """An eval's folder (its own summary.json) or a test result the user added notes to was
    deleted whole by --overwrite; now it is refused, naming the file, and left unchanged."""
    out = tmp_path / "result"
    args = ["--run", str(tiny_run), "--data", str(synthetic_preprocessed), "--out", str(out),
            "--no-images", "--no-morphology", "-q"]
    assert main(args) == 0
    (out / "my notes.txt").write_text("mine")
    assert main([*args, "--overwrite"]) == 1
    assert "holds 'my notes.txt', which vesselseg test did not write" in capsys.readouterr().err
    assert (out / "my notes.txt").read_text() == "mine"
    eval_out = tmp_path / "eval"
    eval_out.mkdir()
    (eval_out / "summary.json").write_text(json.dumps({"version": "x", "photos": 1}))
    (eval_out / "results.csv").write_text("path,status\n")
    assert main([*args[:4], "--out", str(eval_out), "--overwrite", "-q"]) == 1
    assert "holds no earlier test result" in capsys.readouterr().err
    assert sorted(p.name for p in eval_out.iterdir()) == ["results.csv", "summary.json"]


def test_a_damaged_epoch_count_in_status_json_does_not_stop_a_test(
        tiny_run, synthetic_preprocessed, tmp_path):
    """status.json's epochs (the TensorBoard step) as a string or a huge number was a
    ValueError traceback (int('many'), or TensorFlow's int64 overflow)."""
    run = shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns("tests"))
    status = json.loads((run / "status.json").read_text())
    for epochs in ("many", 1e300):
        (run / "status.json").write_text(json.dumps({**status, "epochs": epochs}))
        assert main(["--run", str(run), "--data", str(synthetic_preprocessed), "--no-images",
                     "--no-morphology", "-q"]) == 0
