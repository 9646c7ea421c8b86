"""`python -m vesselseg.preprocess` end to end: synthetic and real data, resuming, bad inputs."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vesselseg.config import PreprocessConfig
from vesselseg.datasets import generate_fundus, read_dataset
from vesselseg.errors import DatasetError
from vesselseg.io import write_png
from vesselseg.preprocess import (
    MANIFEST,
    SETTINGS,
    load_manifest,
    load_preprocess_config,
    main,
    preprocess_dataset,
    process_sample,
)

COLUMNS = {"id", "dataset", "split", "native_width", "native_height", "crop_x0", "crop_y0",
           "crop_x1", "crop_y1", "native_image", "native_annotation", "native_fov", "fov_source",
           "second_observer", "image", "vessels", "fov", "augment_of"}


def run(capsys, *argv) -> tuple[int, str, str]:
    """Call the CLI in-process; return (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def files_with_mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns
            for p in sorted(folder.rglob("*")) if p.is_file()}


def part_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".part")]


def read_png(path: Path) -> np.ndarray:
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert array is not None, path
    return array


def check_outputs(out: Path, size: int) -> pd.DataFrame:
    """Manifest complete, every output file the right size, the FOV binary, the vessels a
    coverage (0-255) that is zero outside the FOV."""
    manifest = load_manifest(out)
    assert set(manifest.columns) == COLUMNS
    assert manifest["id"].is_unique
    for row in manifest.itertuples():
        image = read_png(Path(row.image))
        assert image.shape == (size, size, 3) and image.dtype == np.uint8
        vessels, fov = read_png(Path(row.vessels)), read_png(Path(row.fov))
        assert vessels.shape == fov.shape == (size, size)
        assert vessels.dtype == np.uint8 and set(np.unique(fov)) <= {0, 255}
        assert not ((vessels > 0) & (fov == 0)).any()  # vessels only inside the FOV
        assert fov.any()
        for column in ("native_image", "native_annotation", "native_fov"):
            assert Path(getattr(row, column)).is_file()
    assert not part_files(out)
    return manifest


@pytest.fixture
def drive_subset(drive_dir, tmp_path) -> Path:
    """Four DRIVE photos (21, 22 training; 01, 02 test) linked into the DRIVE folder layout."""
    root = tmp_path / "DRIVE"
    for split, numbers in (("training", (21, 22)), ("test", (1, 2))):
        names = {"images": "{n:02d}_" + split + ".tif", "1st_manual": "{n:02d}_manual1.gif",
                 "mask": "{n:02d}_" + split + "_mask.gif"}
        if split == "test":
            names["2nd_manual"] = "{n:02d}_manual2.gif"
        for folder, pattern in names.items():
            (root / split / folder).mkdir(parents=True, exist_ok=True)
            for number in numbers:
                name = pattern.format(n=number)
                (root / split / folder / name).symlink_to(drive_dir / split / folder / name)
    return root


def make_folder_dataset(root: Path, count: int = 4, size: int = 96) -> Path:
    """A `folder` dataset (images/*.png, masks/*.png, no FOV masks) of synthetic photos."""
    for index in range(count):
        sample = generate_fundus(100 + index, size)
        write_png(root / "images" / f"img{index}.png", sample.image)
        write_png(root / "masks" / f"img{index}.png", sample.vessels)
    return root


# --------------------------------------------------------------------------- synthetic


def test_synthetic_end_to_end(synthetic_dataset, tmp_path, capsys):
    out = tmp_path / "pre"
    code, stdout, _ = run(capsys, "--dataset", "synthetic", "--source", synthetic_dataset,
                          "--out", out, "--size", 128)
    assert code == 0
    assert "wrote" in stdout and MANIFEST in stdout
    manifest = check_outputs(out, 128)
    assert len(manifest) == 8
    counts = Counter(manifest["split"])
    assert counts["test"] == 2 and counts["val"] >= 1 and counts["train"] + counts["val"] == 6
    assert set(manifest["dataset"]) == {"synthetic"}
    assert set(manifest["fov_source"]) == {"official"}
    assert (manifest["native_width"] == 128).all() and (manifest["native_height"] == 128).all()
    assert (manifest["augment_of"] == "").all()
    assert load_preprocess_config(out) == PreprocessConfig(size=128)
    settings = json.loads((out / SETTINGS).read_text())
    assert settings["dataset"] == "synthetic" and settings["config"]["size"] == 128



def test_quiet_prints_no_progress_and_a_log_gets_plain_lines(synthetic_dataset, tmp_path,
                                                              capsys):
    """-q used to be ignored here (tqdm's bar went to every log); without it, output that is
    not a terminal gets plain lines, as in eval."""
    argv = ["--dataset", "synthetic", "--source", synthetic_dataset, "--size", 128]
    code, _, err = run(capsys, *argv, "--out", tmp_path / "quiet", "-q")
    assert code == 0 and err == ""
    code, _, err = run(capsys, *argv, "--out", tmp_path / "log")
    assert code == 0 and "preprocess synthetic: 8/8 img" in err and "\r" not in err

def test_rerun_is_nothing_to_do_and_rewrites_nothing(synthetic_dataset, tmp_path, capsys):
    out = tmp_path / "pre"
    argv = ["--dataset", "synthetic", "--source", synthetic_dataset, "--out", out, "--size", 128]
    assert run(capsys, *argv)[0] == 0
    before = files_with_mtimes(out)
    code, stdout, _ = run(capsys, *argv)
    assert code == 0
    assert "nothing to do" in stdout and "wrote" not in stdout
    assert files_with_mtimes(out) == before


def test_other_settings_need_overwrite(synthetic_dataset, tmp_path, capsys):
    out = tmp_path / "pre"
    base = ["--dataset", "synthetic", "--source", synthetic_dataset, "--out", out]
    assert run(capsys, *base, "--size", 128)[0] == 0
    before = files_with_mtimes(out)
    code, stdout, stderr = run(capsys, *base, "--size", 160)
    assert code == 1
    assert "other settings" in stderr and "--overwrite" in stderr and str(out) in stderr
    assert files_with_mtimes(out) == before
    code, _, stderr = run(capsys, *base, "--size", 128, "--enhancement", "clahe")
    assert code == 1 and "other settings" in stderr
    code, stdout, _ = run(capsys, *base, "--size", 160, "--overwrite")
    assert code == 0 and "wrote" in stdout
    check_outputs(out, 160)
    assert load_preprocess_config(out).size == 160


def test_offline_augmentation(synthetic_dataset, tmp_path, capsys):
    out = tmp_path / "aug"
    code, _, _ = run(capsys, "--dataset", "synthetic", "--source", synthetic_dataset, "--out", out,
                     "--size", 96, "--augment", 2, "--val-fraction", 0.2)
    assert code == 0
    manifest = check_outputs(out, 96)
    originals = manifest[manifest["augment_of"] == ""]
    copies = manifest[manifest["augment_of"] != ""]
    train = originals[originals["split"] == "train"]
    assert len(originals) == 8 and len(copies) == 2 * len(train)
    assert set(copies["augment_of"]) == set(train["id"])
    assert (copies["split"] == "train").all()
    for parent in train["id"]:
        first, second = (read_png(out / "images" / f"{parent}_aug{k}.png") for k in (1, 2))
        assert not np.array_equal(first, second)
    # the same seed gives the same augmented pixels
    again = tmp_path / "aug2"
    run(capsys, "--dataset", "synthetic", "--source", synthetic_dataset, "--out", again,
        "--size", 96, "--augment", 2, "--val-fraction", 0.2)
    name = f"{train['id'].iloc[0]}_aug1.png"
    assert (out / "images" / name).read_bytes() == (again / "images" / name).read_bytes()


def test_augmentation_differs_between_samples_with_a_common_prefix(tmp_path):
    """Ids sharing their first 8 characters must not get the same random transform."""
    image = np.zeros((96, 96, 3), np.uint8)
    image[20:40, 10:30] = 200  # an asymmetric square: its transform is visible
    vessels = np.zeros((96, 96), bool)
    for name in ("synthetic_000", "synthetic_001"):
        write_png(tmp_path / "src" / "images" / f"{name}.png", image)
        write_png(tmp_path / "src" / "masks" / f"{name}.png", vessels)
        write_png(tmp_path / "src" / "fov" / f"{name}.png", np.ones((96, 96), bool))
    samples = read_dataset("folder", tmp_path / "src").samples
    config = PreprocessConfig(size=96, augment=1, crop_to_fov=False)
    for sample in samples:
        process_sample(sample, tmp_path / "out", config)
    first, second = (read_png(tmp_path / "out" / "images" / f"{s.id}_aug1.png") for s in samples)
    assert not np.array_equal(first, second)


# --------------------------------------------------------------------------- real data


@pytest.mark.real_data
def test_drive_subset_at_default_size(drive_subset, tmp_path, capsys):
    out = tmp_path / "drive"
    code, stdout, _ = run(capsys, "--dataset", "drive", "--source", drive_subset, "--out", out)
    assert code == 0
    manifest = check_outputs(out, 512)
    assert len(manifest) == 4
    assert Counter(manifest["split"]) == {"test": 2, "train": 1, "val": 1}
    assert (manifest["native_width"] == 565).all() and (manifest["native_height"] == 584).all()
    assert set(manifest["fov_source"]) == {"official"}
    test = manifest[manifest["split"] == "test"]
    assert all(Path(p).name.endswith("_manual2.gif") for p in test["second_observer"])
    assert (manifest[manifest["split"] != "test"]["second_observer"] == "").all()
    vessels = read_png(Path(manifest["vessels"].iloc[0])) > 0
    fov = read_png(Path(manifest["fov"].iloc[0])) > 0
    assert 0.05 < vessels.sum() / fov.sum() < 0.25


@pytest.mark.real_data
@pytest.mark.slow
def test_full_drive(drive_dir, tmp_path, capsys):
    out = tmp_path / "drive"
    code, stdout, _ = run(capsys, "--dataset", "drive", "--source", drive_dir, "--out", out)
    assert code == 0
    manifest = pd.read_csv(out / MANIFEST, keep_default_na=False)
    assert set(manifest.columns) == COLUMNS
    counts = Counter(manifest["split"])
    assert counts["test"] == 20 and counts["train"] + counts["val"] == 20 and counts["val"] == 3
    assert (manifest["native_width"] == 565).all() and (manifest["native_height"] == 584).all()
    for folder in ("images", "vessels", "fov"):
        assert len(list((out / folder).glob("*.png"))) == 40
    for row in manifest.iloc[::13].itertuples():
        assert read_png(out / row.image).shape == (512, 512, 3)
        assert read_png(out / row.vessels).shape == (512, 512)
    assert not part_files(out)


@pytest.mark.real_data
def test_chase_subset_estimates_the_fov(chase_dir, tmp_path, capsys):
    source = tmp_path / "CHASEDB1"
    source.mkdir()
    for stem in ("Image_01L", "Image_14R"):
        for suffix in (".jpg", "_1stHO.png", "_2ndHO.png"):
            (source / f"{stem}{suffix}").symlink_to(chase_dir / f"{stem}{suffix}")
    out = tmp_path / "chase"
    code, _, _ = run(capsys, "--dataset", "chase", "--source", source, "--out", out, "--size", 256)
    assert code == 0
    manifest = check_outputs(out, 256)
    assert len(manifest) == 2 and set(manifest["fov_source"]) == {"estimated"}
    assert (manifest["native_width"] == 999).all() and (manifest["native_height"] == 960).all()
    for path in manifest["native_fov"]:
        fov = read_png(Path(path))
        assert fov.shape == (960, 999) and 0.6 < (fov > 0).mean() < 0.95
        assert Path(path).parent == out / "native_fov"


@pytest.mark.real_data
def test_hrf_one_image_and_missing_annotation_is_reported(hrf_dir, tmp_path, capsys):
    source = tmp_path / "HRF"
    for folder, name in (("images", "01_dr.JPG"), ("manual1", "01_dr.tif"),
                         ("mask", "01_dr_mask.tif"), ("images", "11_h.jpg")):
        (source / folder).mkdir(parents=True, exist_ok=True)
        (source / folder / name).symlink_to(hrf_dir / folder / name)
    out = tmp_path / "hrf"
    code, _, stderr = run(capsys, "--dataset", "hrf", "--source", source, "--out", out,
                          "--size", 256)
    assert code == 0
    assert "skipped" in stderr and "11_h.jpg" in stderr and "test set loses it" in stderr
    manifest = check_outputs(out, 256)
    assert list(manifest["id"]) == ["hrf_01_dr"]
    assert manifest["native_width"].iloc[0] == 3504 and manifest["native_height"].iloc[0] == 2336


# --------------------------------------------------------------------------- bad inputs


def assert_failed(code: int, stderr: str, *names: str, status: int = 1) -> None:
    assert code == status
    assert "error:" in stderr
    for name in names:
        assert name in stderr, stderr


def test_corrupt_and_zero_byte_images(tmp_path, capsys):
    source = make_folder_dataset(tmp_path / "data")
    (source / "images" / "img1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage" * 10)
    (source / "images" / "img2.png").write_bytes(b"")
    out = tmp_path / "out"
    code, _, stderr = run(capsys, "--dataset", "folder", "--source", source, "--out", out,
                          "--size", 64)
    assert_failed(code, stderr, "img1.png", "img2.png", "2 file(s) failed")
    assert "empty" in stderr
    assert not (out / MANIFEST).exists()
    assert not part_files(out)
    # the good samples were kept; after fixing the files a re-run finishes the job
    assert {p.name for p in (out / "images").iterdir()} == {"img0.png", "img3.png"}
    for index in (1, 2):
        write_png(source / "images" / f"img{index}.png", generate_fundus(100 + index, 96).image)
    code, stdout, _ = run(capsys, "--dataset", "folder", "--source", source, "--out", out,
                          "--size", 64)
    assert code == 0 and "wrote" in stdout
    assert len(check_outputs(out, 64)) == 4


def test_annotation_of_another_size(tmp_path, capsys):
    source = make_folder_dataset(tmp_path / "data")
    write_png(source / "masks" / "img3.png", np.zeros((80, 90), np.uint8))
    code, _, stderr = run(capsys, "--dataset", "folder", "--source", source,
                          "--out", tmp_path / "out", "--size", 64)
    assert_failed(code, stderr, "masks/img3.png", "90x80", "96x96")
    assert not part_files(tmp_path / "out")


def test_empty_official_fov_mask(tmp_path, capsys):
    source = make_folder_dataset(tmp_path / "data", count=2)
    write_png(source / "fov" / "img0.png", np.zeros((96, 96), bool))
    write_png(source / "fov" / "img1.png", generate_fundus(101, 96).fov)
    code, _, stderr = run(capsys, "--dataset", "folder", "--source", source,
                          "--out", tmp_path / "out", "--size", 64)
    assert_failed(code, stderr, "fov/img0.png", "FOV mask is empty")
    assert "img1.png" not in stderr


def test_image_without_annotation(tmp_path, capsys):
    source = make_folder_dataset(tmp_path / "data")
    (source / "masks" / "img2.png").unlink()
    out = tmp_path / "out"
    code, _, stderr = run(capsys, "--dataset", "folder", "--source", source, "--out", out,
                          "--size", 64)
    assert_failed(code, stderr, "img2.png", "--skip-missing")
    assert not (out / MANIFEST).exists()
    code, stdout, stderr = run(capsys, "--dataset", "folder", "--source", source, "--out", out,
                               "--size", 64, "--skip-missing")
    assert code == 0
    assert "warning: skipped" in stderr and "img2.png" in stderr and "1 image(s) skipped" in stdout
    assert sorted(check_outputs(out, 64)["id"]) == ["img0", "img1", "img3"]


def test_missing_and_empty_source_folders(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    code, _, stderr = run(capsys, "--dataset", "folder", "--source", missing,
                          "--out", tmp_path / "out")
    assert_failed(code, stderr, str(missing), "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, stderr = run(capsys, "--dataset", "folder", "--source", empty,
                          "--out", tmp_path / "out")
    assert_failed(code, stderr, str(empty))
    (empty / "images").mkdir()
    (empty / "masks").mkdir()
    code, _, stderr = run(capsys, "--dataset", "folder", "--source", empty,
                          "--out", tmp_path / "out")
    assert_failed(code, stderr, "images", "no image files")
    code, _, stderr = run(capsys, "--dataset", "drive", "--source", empty,
                          "--out", tmp_path / "out2")
    assert_failed(code, stderr, "not a DRIVE folder")
    assert not (tmp_path / "out" / MANIFEST).exists()


def test_invalid_arguments(tmp_path, capsys):
    code, _, stderr = run(capsys, "--out", tmp_path / "out", "--size", 100)
    assert_failed(code, stderr, "size", status=2)  # bad settings are usage errors
    code, _, stderr = run(capsys, "--out", tmp_path / "out", "--val-fraction", 1.5)
    assert_failed(code, stderr, "val_fraction", status=2)
    with pytest.raises(SystemExit) as info:
        main(["--dataset", "nope", "--out", str(tmp_path / "out")])
    assert info.value.code == 2
    assert not (tmp_path / "out").exists()


def test_unreadable_settings_file(synthetic_dataset, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / SETTINGS).write_text("{ half")
    code, _, stderr = run(capsys, "--dataset", "synthetic", "--source", synthetic_dataset,
                          "--out", out, "--size", 64)
    assert_failed(code, stderr, SETTINGS, "--overwrite")
    code, _, _ = run(capsys, "--dataset", "synthetic", "--source", synthetic_dataset,
                     "--out", out, "--size", 64, "--overwrite")
    assert code == 0


# --------------------------------------------------------------------------- formats, resume


def test_unusual_formats_in_a_folder_dataset(tmp_path, capsys):
    source = tmp_path / "formats"
    (source / "images").mkdir(parents=True)
    (source / "masks").mkdir()
    writers = {
        "gray.png": lambda img: Image.fromarray(img[..., 0]).save(source / "images" / "gray.png"),
        "rgba.png": lambda img: Image.fromarray(
            np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])).save(
            source / "images" / "rgba.png"),
        "palette.gif": lambda img: Image.fromarray(img).convert("P").save(
            source / "images" / "palette.gif"),
        "deep.tif": lambda img: cv2.imwrite(str(source / "images" / "deep.tif"),
                                            (img.astype(np.uint16) * 257)[..., ::-1]),
        "bits.png": lambda img: Image.fromarray(img[..., 0] > 40).save(
            source / "images" / "bits.png"),
        "scan.ppm.gz": lambda img: (source / "images" / "scan.ppm.gz").write_bytes(
            gzip.compress(cv2.imencode(".ppm", img[..., ::-1])[1].tobytes())),
    }
    for index, (name, write) in enumerate(writers.items()):
        sample = generate_fundus(200 + index, 96)
        write(sample.image)
        stem = name.split(".")[0]
        Image.fromarray(sample.vessels).save(source / "masks" / f"{stem}.png")  # 1-bit masks
    code, stdout, stderr = run(capsys, "--dataset", "folder", "--source", source,
                               "--out", tmp_path / "out", "--size", 64, "--val-fraction", 0)
    assert code == 0, stderr
    manifest = check_outputs(tmp_path / "out", 64)
    assert sorted(manifest["id"]) == sorted(n.split(".")[0] for n in writers)
    assert set(manifest["fov_source"]) == {"estimated"}
    for row in manifest.itertuples():
        assert read_png(Path(row.vessels)).any(), row.id


def test_resume_after_a_kill(tmp_path, capsys):
    source = make_folder_dataset(tmp_path / "data", count=5)
    out = tmp_path / "out"
    config = PreprocessConfig(size=64)
    # a run killed half-way: two samples done, one temporary file left behind, no manifest

    def kill(rows: int) -> None:
        if rows == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        preprocess_dataset("folder", source, out, config, workers=1, progress=False,
                           on_sample_done=kill)
    done = sorted(p.name for p in (out / "images").iterdir())
    assert done[:2] == ["img0.png", "img1.png"] and len(done) <= 3  # the queued ones never ran
    stray = out / "images" / ".img2.png.abc123.part"
    stray.write_bytes(b"\x89PNG half")
    done = files_with_mtimes(out / "images")
    code, stdout, _ = run(capsys, "--dataset", "folder", "--source", source, "--out", out,
                          "--size", 64)
    assert code == 0 and "wrote" in stdout
    manifest = check_outputs(out, 64)  # also: no .part file left
    assert sorted(manifest["id"]) == [f"img{i}" for i in range(5)]
    assert Counter(manifest["split"]) == {"train": 4, "val": 1}
    after = files_with_mtimes(out / "images")
    for name in ("img0.png", "img1.png"):  # finished samples were kept, not redone
        assert after[name] == done[name]
    assert not stray.exists()


def test_overwrite_replaces_everything(synthetic_dataset, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["--dataset", "synthetic", "--source", synthetic_dataset, "--out", out, "--size", 64]
    assert run(capsys, *base, "--augment", 1)[0] == 0
    assert any("_aug1" in p.name for p in (out / "images").iterdir())
    assert run(capsys, *base, "--overwrite")[0] == 0
    names = {p.name for p in (out / "images").iterdir()}
    assert not any("_aug" in n for n in names)
    assert len(check_outputs(out, 64)) == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left


def test_module_help_in_a_subprocess():
    result = subprocess.run([sys.executable, "-m", "vesselseg.preprocess", "--help"],
                            capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    for option in ("--dataset", "--source", "--out", "--size", "--overwrite", "--skip-missing"):
        assert option in result.stdout
    assert "tensorflow" not in result.stderr.lower()


def test_preprocess_does_not_import_tensorflow():
    code = ("import sys, vesselseg.preprocess; "
            "sys.exit(1 if 'tensorflow' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_load_manifest_without_preprocessing(tmp_path):
    with pytest.raises(DatasetError, match="no manifest"):
        load_manifest(tmp_path)
    with pytest.raises(DatasetError, match="missing"):
        load_preprocess_config(tmp_path)


# ------------------------------------------------------------- preprocess never loses data (#36)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["same", "inside", "containing"])
def test_out_overlapping_source_is_refused(tmp_path, capsys, where):
    """`--out` equal to `--source` replaced the original photos."""
    source = make_folder_dataset(tmp_path / "data" / "photos", count=2)
    before = snapshot(tmp_path / "data")
    out = {"same": source, "inside": source / "preprocessed", "containing": tmp_path / "data"}
    code, _, stderr = run(capsys, "--dataset", "folder", "--source", source, "--out",
                          out[where], "--size", 64)
    assert_failed(code, stderr, str(out[where]), "--source", "outside")
    assert snapshot(tmp_path / "data") == before
    assert not (source / "preprocessed").exists()


def test_folder_not_written_by_preprocess_is_never_replaced(tmp_path, capsys):
    source = make_folder_dataset(tmp_path / "data", count=2)
    mine = tmp_path / "my results"
    write_png(mine / "images" / "img0.png", np.full((8, 8), 7, np.uint8))  # same name as an output
    before = snapshot(mine)
    for extra in ([], ["--overwrite"]):
        code, _, stderr = run(capsys, "--dataset", "folder", "--source", source, "--out", mine,
                              "--size", 64, *extra)
        assert_failed(code, stderr, "my results", SETTINGS, "not empty")
        assert snapshot(mine) == before


def test_overwrite_replaces_only_what_preprocess_wrote(synthetic_dataset, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["--dataset", "synthetic", "--source", synthetic_dataset, "--out", out, "--size", 64]
    assert run(capsys, *base)[0] == 0
    (out / "images" / "leftover.png").write_bytes(b"x")
    (out / "my notes.txt").write_text("keep me")
    before = snapshot(out)
    code, _, stderr = run(capsys, *base, "--overwrite", "--size", 96)
    assert_failed(code, stderr, "images/leftover.png", "my notes.txt", "--overwrite replaces only")
    assert snapshot(out) == before


def test_overwrite_keeps_the_earlier_output_until_the_new_one_is_complete(tmp_path, capsys):
    """A broken photo found mid-run left neither the earlier output nor a new one."""
    source = make_folder_dataset(tmp_path / "data", count=4)
    out = tmp_path / "out"
    base = ["--dataset", "folder", "--source", source, "--out", out, "--val-fraction", 0]
    assert run(capsys, *base, "--size", 64)[0] == 0
    earlier = snapshot(out)
    good = (source / "images" / "img2.png").read_bytes()
    (source / "images" / "img2.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    code, _, stderr = run(capsys, *base, "--size", 96, "--overwrite")
    assert_failed(code, stderr, "img2.png", "keeps the earlier output, unchanged")
    assert snapshot(out) == earlier
    staging = tmp_path / ".out.preprocess-new"
    assert staging.is_dir() and not (staging / MANIFEST).exists()
    (source / "images" / "img2.png").write_bytes(good)
    assert run(capsys, *base, "--size", 96, "--overwrite")[0] == 0
    manifest = check_outputs(out, 96)
    assert len(manifest) == 4 and sorted(p.name for p in tmp_path.iterdir()) == ["data", "out"]
    assert all(Path(p).parent == out.resolve() / "native_fov" for p in manifest["native_fov"])


def test_a_run_killed_while_swapping_is_recovered(tmp_path, capsys, monkeypatch):
    import vesselseg.preprocess as preprocess

    source = make_folder_dataset(tmp_path / "data", count=2)
    out = tmp_path / "out"
    base = ["--dataset", "folder", "--source", source, "--out", out]
    assert run(capsys, *base, "--size", 64)[0] == 0
    earlier = snapshot(out)
    renames, real_rename = [], preprocess.os.rename

    def rename(src, dst):
        renames.append(dst)
        if len(renames) == 2:  # killed between moving the earlier output aside and the new in
            raise KeyboardInterrupt
        return real_rename(src, dst)

    monkeypatch.setattr(preprocess.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        preprocess.preprocess_dataset("folder", source, out, PreprocessConfig(size=96),
                                      overwrite=True, progress=False)
    monkeypatch.undo()
    assert not out.exists(), renames
    code, stdout, _ = run(capsys, *base, "--size", 64)  # the earlier output comes back as it was
    assert code == 0 and "already complete" in stdout and snapshot(out) == earlier
    assert run(capsys, *base, "--size", 96, "--overwrite")[0] == 0
    assert len(check_outputs(out, 96)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out"]


def test_interrupt_stops_within_a_second_and_cancels_queued_work(tmp_path, monkeypatch):
    """Ctrl-C took 7-16 s: the executor ran every queued sample before re-raising."""
    import threading
    import time

    import vesselseg.preprocess as preprocess
    from vesselseg.datasets import ReadResult, Sample

    samples = [Sample(f"s{i}", "fake", "train", tmp_path / f"s{i}.png", tmp_path / "m.png")
               for i in range(40)]
    monkeypatch.setattr(preprocess, "read_dataset", lambda *_: ReadResult(samples, []))
    started = []

    def slow(sample, out, config, notes=None, final=None):
        started.append(sample.id)
        time.sleep(0.25)
        return [{"id": sample.id, "split": "train"}]

    monkeypatch.setattr(preprocess, "process_sample", slow)

    def interrupt(rows: int) -> None:
        raise KeyboardInterrupt

    begin = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        preprocess.preprocess_dataset("folder", tmp_path / "src", tmp_path / "out",
                                      PreprocessConfig(size=64, val_fraction=0), workers=2,
                                      progress=False, on_sample_done=interrupt)
    assert time.monotonic() - begin < 1.5
    assert len(started) <= 4  # the queued samples were cancelled, not run
    assert threading.active_count() == 1 or all(
        not t.name.startswith("ThreadPoolExecutor") for t in threading.enumerate())
    assert not (tmp_path / "out" / MANIFEST).exists()


def test_symlink_loops_and_dangling_links_are_named(tmp_path, capsys):
    source = make_folder_dataset(tmp_path / "data", count=2)
    (source / "images" / "loop.png").symlink_to("loop.png")
    (source / "images" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (source / "masks" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    code, _, stderr = run(capsys, "--dataset", "folder", "--source", source, "--out",
                          tmp_path / "out", "--size", 64, "--val-fraction", 0)
    assert code == 0, stderr
    assert "warning: " in stderr and "loop.png: a symbolic link loop" in stderr
    assert "images/gone.png: a dangling symbolic link" in stderr
    assert "masks/gone.png: a dangling symbolic link" in stderr


def test_test_image_without_annotation_is_reported(tmp_path, capsys):
    source = make_folder_dataset(tmp_path / "data", count=4)
    (source / "split.csv").write_text("id,split\nimg0,train\nimg1,train\nimg2,test\nimg3,test\n")
    (source / "masks" / "img3.png").unlink()
    code, stdout, stderr = run(capsys, "--dataset", "folder", "--source", source, "--out",
                               tmp_path / "out", "--size", 64, "--skip-missing")
    assert code == 0
    assert "warning: skipped" in stderr and "img3.png" in stderr
    assert "a test image: the test set loses it" in stderr and "1 image(s) skipped" in stdout


MANIFESTS = {
    "empty": (b"", "is empty"),
    "header-only": (b"id,dataset,split,image,vessels,fov\n", "has no rows"),
    "binary": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe" * 20, "not a readable manifest"),
    "malformed": (b'id,split,image,vessels,fov\na,train,"images/a.png\nb,c\n',
                  "not a readable manifest"),
    "not-a-manifest": (b'{"id": 1, "split": "train"}\n', "not a vesselseg manifest"),
    "duplicate-id": (b"id,split,image,vessels,fov\na,train,images/a.png,vessels/a.png,fov/a.png\n"
                     b"a,test,images/a.png,vessels/a.png,fov/a.png\n",
                     "id 'a' appears 2 times (lines 2, 3)"),
    "bad-split": (b"id,split,image,vessels,fov\na,training,images/a.png,vessels/a.png,fov/a.png\n",
                  "manifest.csv:2: split 'training'"),
    "path-escapes": (b"id,split,image,vessels,fov\na,train,../../a.png,vessels/a.png,fov/a.png\n",
                     "not a path inside the folder"),
}


@pytest.mark.parametrize("kind", list(MANIFESTS))
def test_malformed_manifest_is_an_error_naming_the_file(tmp_path, kind):
    from vesselseg.preprocess import merged_manifest

    data, fragment = MANIFESTS[kind]
    (tmp_path / MANIFEST).write_bytes(data)
    for load in (load_manifest, lambda folder: merged_manifest([folder])):
        with pytest.raises(DatasetError) as info:
            load(tmp_path)
        assert str(tmp_path / MANIFEST) in str(info.value) and fragment in str(info.value)


def test_manifest_ids_that_look_like_numbers_stay_text(tmp_path):
    (tmp_path / MANIFEST).write_text("id,split,image,vessels,fov\n01,train,images/01.png,"
                                     "vessels/01.png,fov/01.png\n")
    assert list(load_manifest(tmp_path)["id"]) == ["01"]


def test_malformed_settings_file_is_an_error_naming_it(tmp_path):
    (tmp_path / SETTINGS).write_text("[1, 2]")
    with pytest.raises(DatasetError, match="preprocess.json: not a preprocess settings file"):
        load_preprocess_config(tmp_path)
    (tmp_path / SETTINGS).write_bytes(b"\xff\xfe{\x00")
    with pytest.raises(DatasetError, match="preprocess.json: unreadable"):
        load_preprocess_config(tmp_path)


def test_a_folder_held_by_another_command_is_refused(tmp_path, capsys):
    from vesselseg.locks import LOCK_NAME, hold_folder

    source = make_folder_dataset(tmp_path / "data", count=2)
    out = tmp_path / "out"
    base = ["--dataset", "folder", "--source", source, "--out", out, "--size", 64]
    with hold_folder(out, command="preprocess"):
        code, _, stderr = run(capsys, *base)
        assert_failed(code, stderr, str(out), "in use by vesselseg preprocess")
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
    assert not out.exists()  # the holder made it and left it empty
    assert run(capsys, *base)[0] == 0 and not (out / LOCK_NAME).exists()
    with hold_folder(out, command="train"):
        code, _, stderr = run(capsys, *base, "--overwrite", "--size", 96)
        assert_failed(code, stderr, "in use by vesselseg train")
    assert run(capsys, *base, "--overwrite", "--size", 96)[0] == 0
    assert not (out / LOCK_NAME).exists() and len(check_outputs(out, 96)) == 2
