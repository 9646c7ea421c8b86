"""Dataset readers (real DRIVE, CHASE_DB1, HRF; small STARE and folder fixtures) and the
synthetic generator."""
from __future__ import annotations

import gzip
import io
import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from vesselseg.datasets import (
    ReadResult,
    generate_fundus,
    get_reader,
    read_dataset,
    reader_names,
    register_reader,
    write_synthetic_dataset,
)
from vesselseg.datasets import base as datasets_base
from vesselseg.errors import DatasetError
from vesselseg.io import read_image, read_mask


def save(path: Path, array: np.ndarray) -> Path:
    """Write an image with PIL in the format the suffix names (.gz: gzip of the inner format)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz"):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format=Image.registered_extensions()[
            Path(path.name[:-3]).suffix])
        path.write_bytes(gzip.compress(buffer.getvalue()))
    else:
        Image.fromarray(array).save(path)
    return path


def small_photo(seed: int = 0, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    sample = generate_fundus(seed, size)
    return sample.image, sample.vessels.astype(np.uint8) * 255


# --------------------------------------------------------------------------- registry


def test_registry_lists_all_readers():
    assert set(reader_names()) >= {"drive", "chase", "hrf", "stare", "folder", "synthetic"}
    assert reader_names() == sorted(reader_names())
    assert callable(get_reader("drive"))


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(DatasetError) as info:
        get_reader("drvie")
    message = str(info.value)
    assert "drvie" in message
    for name in ("drive", "chase", "hrf", "stare", "folder", "synthetic"):
        assert name in message
    with pytest.raises(DatasetError, match="valid names"):
        read_dataset("drvie", ".")


def test_register_reader(monkeypatch, tmp_path):
    monkeypatch.setattr(datasets_base, "_READERS", dict(datasets_base._READERS))

    @register_reader("mine")
    def read_mine(source: Path) -> ReadResult:
        return ReadResult([], [])

    assert get_reader("mine") is read_mine
    assert "mine" in reader_names()
    with pytest.raises(DatasetError, match="no annotated images"):
        read_dataset("mine", tmp_path)


def test_read_dataset_source_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_dataset("drive", tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="not a folder"):
        read_dataset("drive", tmp_path / "file")
    with pytest.raises(DatasetError, match="--source"):
        read_dataset("drive", None)
    with pytest.raises(DatasetError, match="not a DRIVE folder"):
        read_dataset("drive", tmp_path)


# --------------------------------------------------------------------------- real datasets


@pytest.mark.real_data
def test_drive(drive_dir):
    result = read_dataset("drive", drive_dir)
    assert result.skipped == []
    samples = result.samples
    assert Counter(s.split for s in samples) == {"train": 20, "test": 20}
    assert {s.id for s in samples} == {f"drive_{n:02d}" for n in range(1, 41)}
    for sample in samples:
        assert sample.dataset == "drive"
        assert sample.annotation.name.endswith("_manual1.gif") and sample.annotation.exists()
        assert sample.fov is not None and sample.fov.exists()
        number = int(sample.id.split("_")[1])
        assert sample.split == ("test" if number <= 20 else "train")
        if sample.split == "test":
            assert sample.second_observer is not None and sample.second_observer.exists()
        else:
            assert sample.second_observer is None
    first = next(s for s in samples if s.id == "drive_01")
    image = read_image(first.image)
    assert image.shape == (584, 565, 3)
    assert read_mask(first.annotation, image.shape[:2]).mean() == pytest.approx(0.12, abs=0.05)
    assert read_mask(first.fov, image.shape[:2]).mean() == pytest.approx(0.68, abs=0.05)


@pytest.mark.real_data
def test_drive_copy_with_clutter_and_a_missing_annotation(drive_dir, tmp_path):
    copy = tmp_path / "DRIVE"
    for folder in ("images", "1st_manual", "mask"):
        (copy / "training" / folder).mkdir(parents=True)
    for number in (21, 22):
        for folder, name in (("images", f"{number}_training.tif"),
                             ("1st_manual", f"{number}_manual1.gif"),
                             ("mask", f"{number}_training_mask.gif")):
            (copy / "training" / folder / name).symlink_to(drive_dir / "training" / folder / name)
    (copy / "training" / "1st_manual" / "22_manual1.gif").unlink()
    (copy / "training" / "images" / "Thumbs.db").write_bytes(b"\0" * 10)
    (copy / "training" / "images" / ".DS_Store").write_bytes(b"\0" * 10)
    result = read_dataset("drive", copy)
    assert [s.id for s in result.samples] == ["drive_21"]
    assert [(p.name, why) for p, why in result.skipped] == [
        ("22_training.tif", "no 1st_manual annotation")]


@pytest.mark.real_data
def test_chase(chase_dir):
    result = read_dataset("chase", chase_dir)
    assert result.skipped == []
    samples = result.samples
    assert len(samples) == 28
    assert Counter(s.split for s in samples) == {"train": 20, "test": 8}
    assert {s.id for s in samples if s.split == "test"} == {
        f"chase_{n}{eye}" for n in (11, 12, 13, 14) for eye in "LR"}
    for sample in samples:
        assert sample.annotation.name.endswith("_1stHO.png")
        assert sample.second_observer is not None and sample.second_observer.name.endswith(
            "_2ndHO.png")
        assert sample.fov is None  # no official FOV: estimated during preprocessing
    mask = read_mask(samples[0].annotation)
    assert mask.shape == (960, 999) and 0.03 < mask.mean() < 0.2


@pytest.mark.real_data
def test_hrf(hrf_dir):
    result = read_dataset("hrf", hrf_dir)
    assert len(result.samples) == 42
    assert sorted(p.stem for p, _ in result.skipped) == ["11_h", "12_h", "13_h"]
    assert all("annotation" in why for _, why in result.skipped)
    ids = {s.id for s in result.samples}
    assert "hrf_01_dr" in ids and "hrf_11_h" not in ids
    assert any(s.image.suffix == ".JPG" for s in result.samples)  # mixed-case extensions
    for sample in result.samples:
        assert sample.fov is not None and sample.fov.name.endswith("_mask.tif")
        assert sample.annotation.suffix == ".tif"
        number = int(sample.id.split("_")[1])
        assert sample.split == ("train" if number <= 5 else "test")
    assert Counter(s.split for s in result.samples) == {"train": 15, "test": 27}


# --------------------------------------------------------------------------- STARE (fixture)


@pytest.fixture
def stare_dir(tmp_path) -> Path:
    root = tmp_path / "STARE"
    for index in (1, 2, 3, 4):
        image, vessels = small_photo(index)
        save(root / "stare-images" / f"im{index:04d}.ppm.gz", image)
        if index != 3:  # im0003 has no labels: reported and skipped
            save(root / "labels-ah" / f"im{index:04d}.ah.ppm.gz", vessels)
        if index in (1, 2):
            save(root / "labels-vk" / f"im{index:04d}.vk.ppm.gz", vessels)
    (root / "stare-images" / "README.txt").write_text("not an image")
    return root


def test_stare(stare_dir):
    result = read_dataset("stare", stare_dir)
    assert [s.id for s in result.samples] == ["stare_im0001", "stare_im0002", "stare_im0004"]
    assert [(p.name, why) for p, why in result.skipped] == [
        ("im0003.ppm.gz", "no labels-ah annotation")]
    assert Counter(s.split for s in result.samples) == {"train": 2, "test": 1}
    by_id = {s.id: s for s in result.samples}
    assert by_id["stare_im0001"].second_observer.name == "im0001.vk.ppm.gz"
    assert by_id["stare_im0004"].second_observer is None
    sample = by_id["stare_im0001"]
    image = read_image(sample.image)
    assert image.shape == (64, 64, 3)
    np.testing.assert_array_equal(read_mask(sample.annotation, image.shape[:2]),
                                  generate_fundus(1, 64).vessels)
    assert result.samples == read_dataset("stare", stare_dir).samples  # seeded split


def test_stare_wrong_folder(tmp_path):
    with pytest.raises(DatasetError, match="not a STARE folder"):
        read_dataset("stare", tmp_path)


# --------------------------------------------------------------------------- folder (fixture)


@pytest.fixture
def folder_dir(tmp_path) -> Path:
    root = tmp_path / "my_data"
    for index, (image_name, mask_name) in enumerate(
            [("a.jpg", "a.png"), ("b.png", "b.gif"), ("c.TIF", "c.tif"), ("d.png", None)]):
        image, vessels = small_photo(index)
        save(root / "images" / image_name, image)
        if mask_name:
            save(root / "masks" / mask_name, vessels)
    save(root / "fov" / "a.png", generate_fundus(0, 64).fov.astype(np.uint8) * 255)
    (root / "images" / "notes.txt").write_text("ignored")
    (root / "images" / ".hidden.png").write_bytes(b"ignored")
    return root


def test_folder_matches_by_stem(folder_dir):
    result = read_dataset("folder", folder_dir)
    by_id = {s.id: s for s in result.samples}
    assert sorted(by_id) == ["a", "b", "c"]
    assert by_id["a"].image.name == "a.jpg" and by_id["a"].annotation.name == "a.png"
    assert by_id["b"].annotation.name == "b.gif"
    assert by_id["c"].image.name == "c.TIF"
    assert by_id["a"].fov.name == "a.png" and by_id["b"].fov is None
    assert all(s.split == "train" and s.dataset == "my_data" for s in result.samples)
    assert [(p.name, why) for p, why in result.skipped] == [("d.png", "no annotation masks/d.*")]


@pytest.mark.parametrize("bom", ["", "\ufeff"])
def test_folder_split_file(folder_dir, bom):
    (folder_dir / "split.csv").write_text(f"{bom}id,split\na,test\nb,val\n", encoding="utf-8")
    splits = {s.id: s.split for s in read_dataset("folder", folder_dir).samples}
    assert splits == {"a": "test", "b": "val", "c": "train"}


def test_folder_bad_split_value(folder_dir):
    (folder_dir / "split.csv").write_text("id,split\na,test\nb,validation\n")
    with pytest.raises(DatasetError) as info:
        read_dataset("folder", folder_dir)
    message = str(info.value)
    assert "split.csv:3" in message and "'validation'" in message


def test_folder_missing_masks_folder(folder_dir):
    shutil.rmtree(folder_dir / "masks")
    with pytest.raises(DatasetError, match="masks"):
        read_dataset("folder", folder_dir)


def test_folder_empty_or_missing_images(tmp_path):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    (tmp_path / "empty" / "images" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="no image files"):
        read_dataset("folder", tmp_path / "empty")
    (tmp_path / "bare").mkdir()
    with pytest.raises(DatasetError, match="images/"):
        read_dataset("folder", tmp_path / "bare")


def test_folder_duplicate_stems_are_an_error(folder_dir):
    image, _ = small_photo(9)
    save(folder_dir / "images" / "a.png", image)  # a.jpg is already there
    with pytest.raises(DatasetError, match="'a'"):
        read_dataset("folder", folder_dir)


def test_folder_without_any_annotation(folder_dir):
    for mask in (folder_dir / "masks").iterdir():
        mask.unlink()
    with pytest.raises(DatasetError, match="no annotated images"):
        read_dataset("folder", folder_dir)


def test_folder_split_file_naming_an_unknown_id_is_an_error(folder_dir):
    """Issue #36: a typo in split.csv ('img_01' for 'img01') was ignored, so a photo meant for
    the test set landed in training."""
    (folder_dir / "split.csv").write_text("id,split\na,test\nB,test\nzzz,train\n")
    with pytest.raises(DatasetError) as info:
        read_dataset("folder", folder_dir)
    message = str(info.value)
    assert str(folder_dir / "split.csv") in message
    assert "'B' (line 3)" in message and "'zzz' (line 4)" in message and "no image" in message


def test_folder_split_file_with_one_id_in_two_splits_is_an_error(folder_dir):
    (folder_dir / "split.csv").write_text("id,split\na,test\nb,train\na,train\n")
    with pytest.raises(DatasetError, match=r"split.csv:4: id 'a' is also in split 'test'"):
        read_dataset("folder", folder_dir)


@pytest.mark.parametrize("encoding", ["utf-16", "latin-1"])
def test_folder_split_file_not_utf8_is_an_error(folder_dir, encoding):
    (folder_dir / "split.csv").write_bytes("id,split\na,test\n# équipe\n".encode(encoding))
    with pytest.raises(DatasetError, match=r"split.csv: not UTF-8 text"):
        read_dataset("folder", folder_dir)


def test_folder_split_file_without_its_columns_is_an_error(folder_dir):
    (folder_dir / "split.csv").write_text("name;set\na;test\n")
    with pytest.raises(DatasetError, match=r"split.csv: expected a CSV file with the columns"):
        read_dataset("folder", folder_dir)


def test_folder_test_image_without_annotation_says_so(folder_dir):
    (folder_dir / "split.csv").write_text("id,split\nd,test\n")
    result = read_dataset("folder", folder_dir)
    assert [(p.name, why) for p, why in result.skipped] == [
        ("d.png", "no annotation masks/d.* (a test image: the test set loses it)")]


def test_broken_links_are_named_in_notes(folder_dir, tmp_path):
    """Symbolic link loops and dangling links vanished silently (Path.is_file() is False)."""
    (folder_dir / "images" / "loop.png").symlink_to("loop.png")
    (folder_dir / "images" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (folder_dir / "images" / "notes.lnk").symlink_to(tmp_path / "nowhere.txt")  # not an image
    result = read_dataset("folder", folder_dir)
    assert sorted(s.id for s in result.samples) == ["a", "b", "c"]
    assert result.notes == [
        f"{folder_dir / 'images' / 'gone.jpg'}: a dangling symbolic link (its target "
        f"{tmp_path / 'nowhere.jpg'} does not exist); ignored",
        f"{folder_dir / 'images' / 'loop.png'}: a symbolic link loop; ignored"]


def test_drive_reader_names_broken_links(tmp_path):
    image, vessels = small_photo(1)
    save(tmp_path / "test" / "images" / "01_test.tif", image)
    save(tmp_path / "test" / "1st_manual" / "01_manual1.gif", vessels)
    (tmp_path / "test" / "images" / "02_test.tif").symlink_to(tmp_path / "gone.tif")
    (tmp_path / "test" / "1st_manual" / "03_manual1.gif").symlink_to("03_manual1.gif")
    save(tmp_path / "test" / "images" / "03_test.tif", image)
    result = read_dataset("drive", tmp_path)
    assert [s.id for s in result.samples] == ["drive_01"]
    assert [why for _, why in result.skipped] == [
        "no 1st_manual annotation (a test image: the test set loses it)"]
    assert len(result.notes) == 2 and "02_test.tif: a dangling" in result.notes[0]
    assert "03_manual1.gif: a symbolic link loop" in result.notes[1]


# --------------------------------------------------------------------------- synthetic


def test_generator_is_deterministic():
    a, b = generate_fundus(7, 96), generate_fundus(7, 96)
    for field in ("image", "vessels", "fov"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    c = generate_fundus(8, 96)
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.vessels, c.vessels)


@pytest.mark.parametrize("size", [96, 128, 256])
def test_generator_output_is_plausible(size):
    for seed in range(3):
        sample = generate_fundus(seed, size)
        assert sample.image.shape == (size, size, 3) and sample.image.dtype == np.uint8
        assert sample.vessels.dtype == bool and sample.fov.dtype == bool
        assert not (sample.vessels & ~sample.fov).any()
        near = cv2.dilate(sample.fov.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        assert sample.image[~near].max() < 20  # dark surround (the blur spills 1-2 px)
        fraction = sample.vessels.sum() / sample.fov.sum()
        assert 0.03 <= fraction <= 0.25, fraction
        # the FOV is a disc: it equals the circle of the same area around its centroid
        yy, xx = np.nonzero(sample.fov)
        radius = np.sqrt(sample.fov.sum() / np.pi)
        grid_y, grid_x = np.mgrid[0:size, 0:size]
        circle = np.hypot(grid_x - xx.mean(), grid_y - yy.mean()) <= radius
        iou = (circle & sample.fov).sum() / (circle | sample.fov).sum()
        assert iou > 0.97
        assert 0.4 * size < radius < 0.5 * size
        # vessels are darker than the background in green
        green = sample.image[..., 1].astype(float)
        assert green[sample.vessels].mean() < green[sample.fov & ~sample.vessels].mean()


def test_write_synthetic_dataset(tmp_path):
    first = write_synthetic_dataset(tmp_path / "one", count=5, size=96, seed=3)
    second = write_synthetic_dataset(tmp_path / "two", count=5, size=96, seed=3)
    other = write_synthetic_dataset(tmp_path / "three", count=5, size=96, seed=4)
    for folder in ("images", "masks", "fov"):
        names = sorted(p.name for p in (first / folder).iterdir())
        assert names == [f"synthetic_{i:03d}.png" for i in range(5)]
        for name in names:
            assert (first / folder / name).read_bytes() == (second / folder / name).read_bytes()
    assert (first / "images" / "synthetic_000.png").read_bytes() != \
        (other / "images" / "synthetic_000.png").read_bytes()
    mask = read_mask(first / "masks" / "synthetic_000.png")
    assert mask.any() and mask.shape == (96, 96)
    result = read_dataset("folder", first)
    assert Counter(s.split for s in result.samples) == {"train": 4, "test": 1}
    assert all(s.fov is not None for s in result.samples)
    assert not [p for p in first.rglob("*") if p.name.endswith(".part")]


def test_synthetic_reader_generates_when_missing(tmp_path):
    result = read_dataset("synthetic", tmp_path / "gen")
    assert len(result.samples) == 12
    assert all(s.dataset == "synthetic" for s in result.samples)
    assert Counter(s.split for s in result.samples) == {"train": 9, "test": 3}
    # a second read reuses the files
    before = (tmp_path / "gen" / "images" / "synthetic_000.png").stat().st_mtime_ns
    read_dataset("synthetic", tmp_path / "gen")
    assert (tmp_path / "gen" / "images" / "synthetic_000.png").stat().st_mtime_ns == before


def test_synthetic_fixture_layout(synthetic_dataset):
    result = read_dataset("synthetic", synthetic_dataset)
    assert len(result.samples) == 8
    image = read_image(result.samples[0].image)
    assert image.shape == (128, 128, 3)
