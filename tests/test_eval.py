import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage import data as skdata

from vesselseg.eval import collect_images, main
from vesselseg.io import read_image


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """The same retina photo as JPEG, grayscale PNG, RGBA PNG, 16-bit TIFF, GIF and PPM."""
    folder = tmp_path_factory.mktemp("photos")
    retina = cv2.resize(skdata.retina(), (300, 300), interpolation=cv2.INTER_AREA)
    Image.fromarray(retina).save(folder / "retina.jpg", quality=92)
    Image.fromarray(retina).convert("L").save(folder / "gray scale.png")
    rgba = np.dstack([retina, np.full(retina.shape[:2], 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    cv2.imwrite(str(folder / "sixteen.tif"), cv2.cvtColor(retina, cv2.COLOR_RGB2BGR)
                .astype(np.uint16) * 257)
    Image.fromarray(retina).convert("P").save(folder / "palette.gif")
    Image.fromarray(retina).save(folder / "netpbm.ppm")
    return folder


def test_every_format_is_segmented_at_native_size(tiny_run, photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(photos), "--run", str(tiny_run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("vessel density") == 6
    for stem in ("retina", "gray scale", "rgba", "sixteen", "palette", "netpbm"):
        for kind in ("probability", "mask", "overlay"):
            written = read_image(out / f"{stem}_{kind}.png")
            assert written.shape[:2] == (300, 300), (stem, kind)
    rows = pd.read_csv(out / "results.csv", keep_default_na=False)
    assert len(rows) == 6 and set(rows["status"]) == {"done"}
    assert (rows["width"] == 300).all() and (rows["height"] == 300).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["compute_precision"] == "float32"
    assert summary["state"] == "finished" and summary["photos"] == {"this_run": 6, "failed": 0}


def test_multiscale_eval_writes_the_averaged_maps_and_records_the_setting(tiny_run, photos,
                                                                          tmp_path):
    from vesselseg.inference import Segmenter

    out = tmp_path / "out"
    assert main([str(photos / "retina.jpg"), "--run", str(tiny_run), "--out", str(out),
                 "--scales", "1,1.5", "--json"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["scales"] == [1.0, 1.5]
    # no threshold of its own yet
    assert summary["settings"]["threshold_source"] == "validation, plain setting"
    expected = Segmenter.from_run(tiny_run, scales=(1.0, 1.5)).predict(
        read_image(photos / "retina.jpg")).probability
    written = read_image(out / "retina_probability.png")
    assert written.shape[:2] == expected.shape
    assert np.abs(written[..., 0].astype(float) / 255 - expected).max() <= 1 / 255 + 1e-6


@pytest.mark.parametrize("scales", ["0.5", "1,1", "big"])
def test_a_bad_scales_list_is_a_usage_error(scales, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["photo.jpg", "--scales", scales])
    assert exit_info.value.code == 2
    assert "--scales" in capsys.readouterr().err


def test_broken_file_is_reported_and_the_others_still_processed(tiny_run, photos, tmp_path,
                                                                capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.jpg").write_bytes((photos / "retina.jpg").read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "z.png").write_bytes((photos / "rgba.png").read_bytes())
    out = tmp_path / "out"
    assert main([str(folder), "--run", str(tiny_run), "--out", str(out), "--json"]) == 1
    captured = capsys.readouterr()
    assert "broken.png" in captured.err and "empty.jpg" in captured.err
    assert "2 of 4 photo(s) failed" in captured.err
    assert (out / "a_overlay.png").exists() and (out / "z_overlay.png").exists()
    assert not (out / "broken_mask.png").exists()
    results = json.loads(captured.out)
    assert [r["status"] for r in results] == ["done", "failed", "failed", "done"]
    table = pd.read_csv(out / "results.csv", keep_default_na=False)
    assert list(table["status"]) == ["done", "failed", "failed", "done"]
    assert "broken.png" in table["error"][1] and table["vessel_density"][1] == ""


def test_existing_outputs_need_overwrite(tiny_run, photos, tmp_path, capsys):
    out = tmp_path / "out"
    image = str(photos / "retina.jpg")
    assert main([image, "--run", str(tiny_run), "--out", str(out)]) == 0
    before = (out / "retina_mask.png").stat().st_mtime_ns
    assert main([image, "--run", str(tiny_run), "--out", str(out)]) == 3
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "retina_mask.png").stat().st_mtime_ns == before
    assert main([image, "--run", str(tiny_run), "--out", str(out), "--overwrite"]) == 0



def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_overwrite_swaps_in_the_new_eval_only_once_it_is_complete(tiny_run, photos, tmp_path,
                                                                   monkeypatch, capsys):
    """A Ctrl-C half-way through `--overwrite` leaves the earlier eval whole (it used to be
    replaced photo by photo, its results.csv restarted); a finished one replaces it whole."""
    import vesselseg.photo_outputs as eval_module

    folder = _folder_of_photos(tmp_path / "in", photos, 3)
    out = tmp_path / "out"
    run = ["--run", str(tiny_run), "--out", str(out), "-q"]
    assert main([str(folder / "p000.jpg"), str(folder / "p001.jpg"), *run]) == 0
    earlier = _snapshot(out)
    calls = []
    real_write = eval_module._write_outputs

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_write(*args)

    monkeypatch.setattr(eval_module, "_write_outputs", interrupted)
    assert main([str(folder), *run, "--overwrite"]) == 130  # Ctrl-C
    assert _snapshot(out) == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]  # no staging left
    monkeypatch.setattr(eval_module, "_write_outputs", real_write)
    assert main([str(folder / "p002.jpg"), *run, "--overwrite"]) == 0
    assert list(pd.read_csv(out / "results.csv")["image"]) == [str(folder / "p002.jpg")]
    assert sorted(p.name for p in out.glob("*_mask.png")) == ["p002_mask.png"]
    assert not (out / ".vesselseg.lock").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]



def test_overwrite_through_a_linked_out_replaces_the_folder_it_points_to(tiny_run, photos,
                                                                         tmp_path):
    real, link = tmp_path / "real", tmp_path / "link"
    run = ["--run", str(tiny_run), "-q"]
    assert main([str(photos / "retina.jpg"), *run, "--out", str(real)]) == 0
    link.symlink_to(real)
    assert main([str(photos / "rgba.png"), *run, "--out", str(link), "--overwrite"]) == 0
    assert link.is_symlink() and link.resolve() == real
    assert sorted(p.name for p in real.glob("*_mask.png")) == ["rgba_mask.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]

def test_overwrite_where_every_photo_fails_keeps_the_earlier_eval(tiny_run, photos, tmp_path,
                                                                  capsys):
    out = tmp_path / "out"
    run = ["--run", str(tiny_run), "--out", str(out), "-q"]
    assert main([str(photos / "retina.jpg"), *run]) == 0
    earlier = _snapshot(out)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a photo")
    assert main([str(bad), *run, "--overwrite"]) == 3
    assert "earlier eval" in capsys.readouterr().err
    assert _snapshot(out) == earlier


def test_overwrite_never_replaces_files_eval_did_not_write(tiny_run, photos, tmp_path, capsys):
    run = ["--run", str(tiny_run), "-q", "--overwrite"]
    image = str(photos / "retina.jpg")
    strange = tmp_path / "strange"  # no earlier eval: a file in the way is the user's
    strange.mkdir()
    (strange / "retina_mask.png").write_bytes(b"mine")
    assert main([image, *run, "--out", str(strange)]) == 3
    assert "no eval wrote it" in capsys.readouterr().err
    assert (strange / "retina_mask.png").read_bytes() == b"mine"
    out = tmp_path / "out"  # an earlier eval plus the user's own notes
    assert main([image, "--run", str(tiny_run), "-q", "--out", str(out)]) == 0
    (out / "notes.txt").write_text("keep me")
    earlier = _snapshot(out)
    assert main([image, *run, "--out", str(out)]) == 3
    assert "notes.txt" in capsys.readouterr().err
    assert _snapshot(out) == earlier


def test_resume_and_overwrite_together_are_a_usage_error(tiny_run, photos, tmp_path, capsys):
    assert main([str(photos / "retina.jpg"), "--run", str(tiny_run), "--out",
                 str(tmp_path / "o"), "--resume", "--overwrite"]) == 2
    assert "one of them" in capsys.readouterr().err

def test_an_earlier_summary_is_never_replaced(tiny_run, photos, tmp_path, capsys):
    """Other photos into the same --out must not silently replace the earlier summary.json."""
    out = tmp_path / "out"
    assert main([str(photos / "retina.jpg"), "--run", str(tiny_run), "--out", str(out)]) == 0
    before = (out / "summary.json").read_bytes()
    assert main([str(photos / "rgba.png"), "--run", str(tiny_run), "--out", str(out)]) == 3
    assert "summary.json already exists" in capsys.readouterr().err
    assert (out / "summary.json").read_bytes() == before
    assert not (out / "rgba_mask.png").exists()


def test_default_output_is_a_new_folder_per_run(tiny_run, photos, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert main([str(photos / "retina.jpg"), "--run", str(tiny_run)]) == 0
    folders = sorted((tmp_path / "artifacts" / "eval").iterdir())
    assert len(folders) == 2
    assert all((f / "retina_overlay.png").exists() and (f / "summary.json").exists()
               for f in folders)


def test_empty_folder_and_missing_input_are_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 3
    assert "no image files" in capsys.readouterr().err
    assert main([str(tmp_path / "nothing.jpg")]) == 3
    assert "nothing.jpg" in capsys.readouterr().err


def test_full_size_hrf_image(tiny_run, hrf_dir, tmp_path):
    out = tmp_path / "hrf"
    assert main([str(hrf_dir / "images" / "01_h.jpg"), "--run", str(tiny_run), "--out",
                 str(out)]) == 0
    assert read_image(out / "01_h_mask.png").shape[:2] == (2336, 3504)


def test_collect_images_skips_non_images(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "b.png").write_bytes(b"")
    found = collect_images([tmp_path])
    assert [p.name for p in found.images] == ["b.png"]
    assert [(p.name, reason) for p, reason in found.skipped] == [
        ("notes.txt", "not an image file name")]


def test_help():
    result = subprocess.run([sys.executable, "-m", "vesselseg.eval", "--help"],
                            capture_output=True, text=True)
    assert result.returncode == 0
    for flag in ("--run", "--out", "--tta", "--threshold", "--json", "--resume", "--recursive",
                 "--overwrite", "--quiet", "--verbose", "--version", "--batch-size"):
        assert flag in result.stdout
    assert "exit status: 0 done; 1" in " ".join(result.stdout.split())


def test_without_run_the_shipped_model_is_used(photos, tmp_path, capsys):
    from vesselseg.runs import PRETRAINED_DIR

    out = tmp_path / "out"
    assert main([str(photos / "retina.jpg"), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["source"] == str(PRETRAINED_DIR)
    assert summary["model"]["version"] == "v0.7"
    row = pd.read_csv(out / "results.csv").iloc[0]
    assert 0.02 < row["vessel_density"] < 0.3  # a plausible vessel share
    assert (row["model"], row["model_version"]) == ("vesselseg-pretrained", "v0.7")


def test_working_size_runs_tiled_and_is_checked(tiny_run, photos, tmp_path, capsys):
    from vesselseg.config import TrainConfig, load_config

    size = load_config(TrainConfig, tiny_run / "config.json").preprocess.size
    out = tmp_path / "out"
    photo = str(photos / "retina.jpg")
    assert main([photo, "--run", str(tiny_run), "--out", str(out),
                 "--working-size", str(2 * size)]) == 0
    assert read_image(out / "retina_mask.png").shape[:2] == (300, 300)
    assert main([photo, "--run", str(tiny_run), "--out", str(tmp_path / "small"),
                 "--working-size", str(size // 2)]) == 2
    assert "working_size" in capsys.readouterr().err
    assert not (tmp_path / "small").exists()


@pytest.mark.parametrize("threshold", ["nan", "5", "-0.1", "high"])
def test_a_threshold_outside_0_1_is_a_usage_error(threshold, capsys):
    from vesselseg.eval import main

    with pytest.raises(SystemExit) as stop:
        main(["photo.png", "--threshold", threshold])
    assert stop.value.code == 2 and "--threshold" in capsys.readouterr().err


# -- results.csv, resume, exit codes, folders ------------------------------------------------------
def _folder_of_photos(folder, photos, count: int):
    folder.mkdir(parents=True, exist_ok=True)
    data = (photos / "retina.jpg").read_bytes()
    for index in range(count):
        (folder / f"p{index:03d}.jpg").write_bytes(data)
    return folder


def test_each_row_matches_the_prediction(tiny_run, photos, tmp_path):
    from vesselseg.inference import Segmenter

    out = tmp_path / "out"
    assert main([str(photos / "retina.jpg"), "--run", str(tiny_run), "--out", str(out)]) == 0
    row = pd.read_csv(out / "results.csv").iloc[0]
    prediction = Segmenter.from_run(tiny_run).predict(photos / "retina.jpg")
    assert row["fov_area_px"] == prediction.fov.sum()
    assert row["vessel_density"] == pytest.approx(prediction.vessel_density, rel=1e-5)
    assert row["threshold"] == pytest.approx(prediction.threshold, rel=1e-5)
    assert row["mask_file"] == "retina_mask.png" and row["setting"] == "plain"


def test_exit_status_tells_all_some_or_none_done(tiny_run, photos, tmp_path):
    good, bad = tmp_path / "good.jpg", tmp_path / "bad.png"
    good.write_bytes((photos / "retina.jpg").read_bytes())
    bad.write_bytes(b"not a photo")
    run = ["--run", str(tiny_run), "--quiet"]
    assert main([str(good), *run, "--out", str(tmp_path / "a")]) == 0
    assert main([str(good), str(bad), *run, "--out", str(tmp_path / "b")]) == 1
    assert main([str(bad), *run, "--out", str(tmp_path / "c")]) == 3
    assert len(pd.read_csv(tmp_path / "c" / "results.csv")) == 1  # the failure is still a row
    with pytest.raises(SystemExit) as usage:
        main([str(good), "--batch-size", "0"])
    assert usage.value.code == 2


def test_resume_does_only_the_rest_and_cuts_a_torn_row(tiny_run, photos, tmp_path):
    folder = _folder_of_photos(tmp_path / "in", photos, 5)
    out = tmp_path / "out"
    assert main([str(folder / "p000.jpg"), str(folder / "p001.jpg"), "--run", str(tiny_run),
                 "--out", str(out), "-q"]) == 0
    table = out / "results.csv"
    with open(table, "a") as handle:  # a kill in the middle of the third row
        handle.write(f"{folder / 'p002.jpg'},done,,300,30")
    before = (out / "p000_mask.png").stat().st_mtime_ns
    assert main([*map(str, sorted(folder.iterdir())), "--run", str(tiny_run), "--out", str(out),
                 "--resume", "-q"]) == 0
    rows = pd.read_csv(table)
    assert sorted(rows["image"]) == [str(p) for p in sorted(folder.iterdir())]
    assert (rows["status"] == "done").all() and rows["width"].notna().all()
    assert (out / "p000_mask.png").stat().st_mtime_ns == before  # not redone


def _kill_after_rows(command: list[str], table, rows: int) -> None:
    """Start `command` and SIGKILL it once `table` holds at least `rows` data rows."""
    import signal
    import time

    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if table.exists() and table.read_text().count("\n") > rows:  # header + rows
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "eval finished before it could be killed"


def test_a_killed_eval_resumes_with_every_photo_once(tiny_run, photos, tmp_path):
    """SIGKILL mid-folder: the finished rows stay, the rerun adds the rest, nothing twice and
    no half-written file."""

    folder = _folder_of_photos(tmp_path / "in", photos, 16)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "vesselseg.eval", str(folder), "--run", str(tiny_run),
               "--out", str(out), "-q", "--batch-size", "1"]
    table = out / "results.csv"
    _kill_after_rows(command, table, 3)
    kept = pd.read_csv(table)
    assert 3 <= len(kept) < 16
    assert subprocess.run(command + ["--resume"], capture_output=True).returncode == 0
    rows = pd.read_csv(table)
    assert sorted(rows["image"]) == [str(p) for p in sorted(folder.iterdir())]
    assert list(rows["image"][:len(kept)]) == list(kept["image"])
    assert not list(out.rglob("*.part")) and not list(out.rglob(".*"))
    masks = sorted(p.name for p in out.glob("*_mask.png"))
    assert masks == [f"p{i:03d}_mask.png" for i in range(16)]


def test_subfolders_need_recursive_and_are_named_when_skipped(tiny_run, photos, tmp_path,
                                                              capsys):
    root = tmp_path / "cohort"
    _folder_of_photos(root, photos, 1)
    _folder_of_photos(root / "visit2", photos, 1)
    (root / "notes.txt").write_text("not a photo")
    out = tmp_path / "flat"
    assert main([str(root), "--run", str(tiny_run), "--out", str(out), "--json"]) == 0
    err = capsys.readouterr().err
    assert "skipped:" in err and "visit2" in err and "notes.txt" in err
    assert len(pd.read_csv(out / "results.csv")) == 1
    out = tmp_path / "deep"
    assert main([str(root), "--run", str(tiny_run), "--out", str(out), "-r", "-q"]) == 0
    assert len(pd.read_csv(out / "results.csv")) == 2
    assert (out / "p000_mask.png").exists() and (out / "visit2" / "p000_mask.png").exists()


@pytest.mark.parametrize("where", ["same", "inside", "around"])
def test_output_folder_never_overlaps_the_input(tiny_run, photos, tmp_path, capsys, where):
    folder = _folder_of_photos(tmp_path / "data" / "photos", photos, 1)
    out = {"same": folder, "inside": folder / "masks", "around": tmp_path / "data"}[where]
    before = sorted(p.name for p in folder.iterdir())
    assert main([str(folder), "--run", str(tiny_run), "--out", str(out), "--overwrite"]) == 2
    assert "--out" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == before


def test_quiet_prints_nothing_but_errors(tiny_run, photos, tmp_path, capsys):
    assert main([str(photos / "retina.jpg"), "--run", str(tiny_run), "--out",
                 str(tmp_path / "o"), "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_a_normal_run_prints_no_tensorflow_start_up_lines(tiny_run, photos, tmp_path):
    """`vesselseg eval photo | grep -ci cuda` prints 0 (TensorFlow reports its CUDA probe on a
    machine without a GPU: test_console shows the filter that drops it, and what it keeps)."""
    command = [sys.executable, "-m", "vesselseg", "eval", str(photos / "retina.jpg"), "--run",
               str(tiny_run), "--no-morphology"]
    quiet = subprocess.run(command + ["--out", str(tmp_path / "a")], capture_output=True,
                           text=True)
    assert quiet.returncode == 0, quiet.stderr
    printed = (quiet.stdout + quiet.stderr).lower()
    assert "cuda" not in printed and "absl" not in printed and "vessel density" in printed


def test_log_file_gets_plain_lines_not_bars(tiny_run, photos, tmp_path, capsys):
    folder = _folder_of_photos(tmp_path / "in", photos, 3)
    assert main([str(folder), "--run", str(tiny_run), "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err  # not a terminal, as in a log file
    assert "\r" not in err and "\x1b" not in err
    assert "eval: 3/3" in err


def test_rows_carry_the_vessel_measurements(tiny_run, photos, tmp_path):
    from vesselseg.inference import Segmenter
    from vesselseg.morphology import measure

    out = tmp_path / "out"
    assert main([str(photos / "retina.jpg"), "--run", str(tiny_run), "--out", str(out), "-q",
                 "--pixel-size-um", "12.5", "--figure", "width"]) == 0
    row = pd.read_csv(out / "results.csv", keep_default_na=False).iloc[0]
    prediction = Segmenter.from_run(tiny_run).predict(photos / "retina.jpg")
    expected = measure(prediction.mask, prediction.fov, 12.5)
    for column in ("fd_mask", "width_median_px", "width_median_um", "segments",
                   "tortuosity_dm", "length_density_norm"):
        if expected[column] == expected[column]:  # not NaN
            assert float(row[column]) == pytest.approx(expected[column], rel=1e-4), column
        else:
            assert row[column] == "" and row["morphology_reason"] == expected["reason"]
    assert (out / "retina_width.png").exists()
    plain = tmp_path / "plain"
    assert main([str(photos / "retina.jpg"), "--run", str(tiny_run), "--out", str(plain), "-q",
                 "--no-morphology"]) == 0
    assert "fd_mask" not in pd.read_csv(plain / "results.csv").columns


def test_a_second_eval_into_a_busy_folder_is_refused(tiny_run, photos, tmp_path, capsys):
    from vesselseg.locks import hold_folder

    out = tmp_path / "out"
    with hold_folder(out, "eval"):  # another eval is writing here
        assert main([str(photos / "retina.jpg"), "--run", str(tiny_run), "--out",
                     str(out)]) == 3
    err = capsys.readouterr().err
    assert "eval" in err and str(os.getpid()) in err
    assert not (out / "results.csv").exists()


# -- cohorts: CSV and text lists of photos, a kill over hundreds of photos ------------------------
def test_a_csv_of_photos_names_outputs_by_id_with_per_photo_pixel_sizes(tiny_run, photos,
                                                                        tmp_path):
    cohort = tmp_path / "cohort"
    _folder_of_photos(cohort / "photos", photos, 2)
    (cohort / "list.csv").write_text("id,path,pixel_size_um\n"
                                     "site1/p0,photos/p000.jpg,10\n"
                                     "p1,photos/p001.jpg,\n")
    out = tmp_path / "out"
    assert main([str(cohort / "list.csv"), "--run", str(tiny_run), "--out", str(out), "-q",
                 "--pixel-size-um", "12.5"]) == 0
    rows = pd.read_csv(out / "results.csv", keep_default_na=False)
    assert list(rows.columns[:3]) == ["image", "id", "status"]
    assert list(rows["image"]) == [str(cohort / "photos" / f"p00{i}.jpg") for i in range(2)]
    assert list(rows["id"]) == ["site1/p0", "p1"]
    assert list(rows["mask_file"]) == ["site1/p0_mask.png", "p1_mask.png"]
    assert (out / "site1" / "p0_overlay.png").exists() and (out / "p1_probability.png").exists()
    assert list(rows["pixel_size_um"]) == [10, 12.5]  # the CSV's, else --pixel-size-um
    listed = tmp_path / "list.txt"
    listed.write_text("cohort/photos/p001.jpg\n")
    assert main([str(listed), "--run", str(tiny_run), "--out", str(tmp_path / "txt"), "-q",
                 "--no-morphology"]) == 0
    assert list(pd.read_csv(tmp_path / "txt" / "results.csv")["image"]) == [
        str(tmp_path / "cohort" / "photos" / "p001.jpg")]


def test_a_bad_csv_stops_eval_naming_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "cohort.csv"
    bad.write_text("path,id\na.jpg,p1\nb.jpg,p1\n")
    assert main([str(bad), "--out", str(tmp_path / "out")]) == 3
    err = capsys.readouterr().err
    assert f"{bad}, line 3: id 'p1' is also on line 2" in err
    assert not (tmp_path / "out").exists()


def test_a_killed_cohort_of_300_photos_resumes_with_every_photo_once(tiny_run, tmp_path):
    """SIGKILL a CSV run of 300 small photos part-way, then --resume: every photo has exactly
    one complete row, in the CSV's order, and every photo its three PNGs."""

    from vesselseg.datasets import generate_fundus
    from vesselseg.io import write_png

    count, folder = 300, tmp_path / "photos"
    folder.mkdir()
    samples = [generate_fundus(seed, 64).image for seed in range(5)]
    for index in range(count):
        write_png(folder / f"p{index:03d}.png", samples[index % len(samples)])
    (tmp_path / "cohort.csv").write_text(
        "path\n" + "".join(f"photos/p{index:03d}.png\n" for index in range(count)))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "vesselseg.eval", str(tmp_path / "cohort.csv"), "--run",
               str(tiny_run), "--out", str(out), "-q", "--no-morphology"]
    table = out / "results.csv"
    _kill_after_rows(command, table, 40)
    kept = pd.read_csv(table)
    assert 40 <= len(kept) < count
    assert subprocess.run(command + ["--resume"], capture_output=True).returncode == 0
    rows = pd.read_csv(table)
    assert list(rows["image"]) == [str(folder / f"p{index:03d}.png") for index in range(count)]
    assert (rows["status"] == "done").all() and rows[["width", "vessel_density"]].notna().all(
        axis=None)
    assert sorted(p.name for p in out.glob("*_mask.png")) == [
        f"p{index:03d}_mask.png" for index in range(count)]
    assert len(list(out.glob("*.png"))) == 3 * count and not list(out.rglob(".*.part"))



def test_an_out_that_is_a_file_is_a_usage_error(photos, tmp_path, capsys):
    afile = tmp_path / "afile.txt"
    afile.write_text("mine")
    assert main([str(photos / "retina.jpg"), "--out", str(afile)]) == 2
    assert "is not a folder" in capsys.readouterr().err and afile.read_text() == "mine"
