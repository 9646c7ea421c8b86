"""Reliability and safety matrix: one test (or parametrized case) per row x command.

Every failing case checks the same four promises:

- a clear message on stderr naming the file (or folder) and what is wrong;
- a non-zero exit status where the command must stop;
- no partial output (no `.part` file, no half-made run or result folder, no incomplete set of a
  photo's outputs);
- earlier outputs and the other inputs unharmed (byte-identical snapshots).

| row | commands | tests |
|---|---|---|
| zero-byte, truncated, non-image files | preprocess, eval, test | test_bad_files_* |
| decompression bomb | preprocess, eval | test_decompression_bomb_* |
| grayscale, RGBA, palette, 16-bit, 1-bit, EXIF JPEG, CMYK | preprocess, eval | test_formats_* |
| annotation of another size / non-binary / all-zero | preprocess, test | test_annotation_* |
| empty folder, no images, missing annotation folder | preprocess, test, eval | test_folder_* |
| names with spaces and non-ASCII characters | all four | test_unicode_names_* |
| output not writable / disk full | preprocess, eval, train | test_unwritable_output_* |
| preprocess killed half-way, re-run | preprocess | test_preprocess_*killed_then_rerun |
| training SIGKILLed, re-run | train | test_train_killed_state_is_resumed (+ test_train.py) |
| training killed at other moments; damaged resume state | train | test_train.py (kills) |
| disk full while the training state is written | train | test_train.py (full_disk) |
| two copies of `train` on one run folder | train | test_locks.py (second_train) |
| config.json edited after training | test, eval, calibrate | test_runs.py (edited) |
| NaN loss | train | test_train_nan_loss_keeps_best_model |
| .keras file with a Lambda layer or other code | test, eval | test_model_with_code_* |
| config with unknown keys or wrong types | train | test_train_bad_config_* |
| random bytes only raise ImageReadError | reader | test_fuzz_mask_and_gzip_reader |
| HDR bomb named .png, 8x2000 photo, multi-page TIFF | preprocess, eval | test_reader_guards_* |
| --out equal to, inside or containing --source | preprocess | test_out_overlaps_source_* |
| --overwrite meets a broken photo half-way | preprocess | test_overwrite_failure_keeps_* |
| eval --overwrite interrupted, all failed, over foreign files | eval | test_eval.py (overwrite_*) |
| malformed, empty, binary or duplicate-id manifest | train | test_bad_manifest_train |
| config file in UTF-16 or other non-UTF-8 bytes | train | test_train_config_not_utf8 |
| FIFO / device named like an image, oversized file | reader | test_io.py (fifo, larger_than) |
| --working-size 100000, --scales 1e9 / nan / inf | eval, test | test_tiling.py (impossible) |
| status.json / threshold.json a list, string, null; BOM | all | test_runs.py (json_type, bom) |
| test --out among its inputs; --overwrite over other files | test | test_test.py (among, alone) |
| damaged epoch count in status.json | test | test_test.py (damaged_epoch) |
| compare --plot: non-numeric metrics, unknown suffix | compare | test_compare.py (not_numbers) |
| absurd settings (seed, base_filters, augment...), bad JSON | train, preprocess | test_config.py |
| recipe with a BOM; batch 10**9; runs_dir inside the data | train | test_train.py (impossible) |

Commands run in-process through their `main([...])` (exit code + capsys), never in subprocesses,
except where the existing tests already do it (see the comments on the SIGKILL row).
"""
from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import io
import json
import os
import shutil
import struct
import threading
import zipfile
import zlib
from collections import namedtuple
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from run_fixtures import tiny_config

import vesselseg.io as vio
from vesselseg import eval as eval_cli
from vesselseg import preprocess as preprocess_cli
from vesselseg import test as test_cli
from vesselseg import train as train_cli
from vesselseg.config import PreprocessConfig
from vesselseg.datasets import generate_fundus
from vesselseg.errors import ImageReadError
from vesselseg.io import read_image, read_mask, write_png

SIZE = 64  # raw photo size: small keeps every case fast
Result = namedtuple("Result", "code out err")


# --------------------------------------------------------------------------- helpers


def cli(capsys, main, *argv) -> Result:
    """Run a command's main() in-process; return its exit code, stdout and stderr."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def snapshot(*folders: Path) -> dict[str, str]:
    """sha256 of every file under the folders (to prove that nothing was touched)."""
    digest = {}
    for folder in folders:
        if folder.is_file():
            digest[str(folder)] = hashlib.sha256(folder.read_bytes()).hexdigest()
        elif folder.is_dir():
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    digest[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


def part_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".part")] if folder.exists() else []


def failed(result: Result, *fragments: str, code: int = 1) -> None:
    """Exit status `code` (1: failed; eval: some photos failed, 3: none could be), an `error:`
    line, every fragment (file names, reasons) in stderr."""
    assert result.code == code, result
    assert "error:" in result.err, result.err
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in result.err, (fragment, result.err)


def make_source(root: Path, names: list[str], split: str | None = None, suffix: str = ".png",
                size: int = SIZE) -> Path:
    """A `folder` dataset: images/<name><suffix> and masks/<name>.png (optional split.csv)."""
    for index, name in enumerate(names):
        sample = generate_fundus(500 + index, size)
        write_png(root / "images" / f"{name}{suffix}", sample.image)
        write_png(root / "masks" / f"{name}.png", sample.vessels)
    if split:
        lines = ["id,split", *(f"{name},{split}" for name in names)]
        (root / "split.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def bomb_png(path: Path, width: int = 50_000, height: int = 50_000) -> Path:
    """A 100-byte PNG whose header declares width x height pixels (CRC recomputed)."""
    Image.new("L", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    return path


def truncated_png(path: Path) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(generate_fundus(7, SIZE).image).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) * 6 // 10])
    return path


#: The three kinds of broken file and the reason the reader gives for each.
BAD_FILES = {
    "zero-byte": (lambda p: p.write_bytes(b""), "is empty (0 bytes)"),
    "truncated": (truncated_png, "is not a readable image"),
    "not-an-image": (lambda p: p.write_bytes(b"meeting notes, not a photo\n" * 30),
                     "is not a readable image"),
}


def fail_writes(monkeypatch, under: Path, error: int, only: str = "") -> None:
    """Make every atomic write below `under` (whose name contains `only`) fail with OSError
    `error` half-way through, as a full disk or a read-only folder would."""
    real = vio.write_bytes_atomic
    under = under.resolve()

    def write(path, data):
        target = Path(path).resolve()
        if target.is_relative_to(under) and only in target.name:
            with vio.atomic_path(path) as tmp:
                tmp.write_bytes(data[: len(data) // 2])
                raise OSError(error, os.strerror(error), str(path))
        return real(path, data)

    monkeypatch.setattr(vio, "write_bytes_atomic", write)


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """A private copy of the tiny run (tests that let a command write into RUN/tests/)."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run copy", ignore=shutil.ignore_patterns(
        "tests", "tensorboard")))


@pytest.fixture
def earlier(tmp_path) -> Path:
    """Earlier outputs that no failing command may touch."""
    folder = tmp_path / "earlier"
    write_png(folder / "old_mask.png", generate_fundus(1, SIZE).vessels)
    (folder / "notes.txt").write_text("earlier results\n")
    return folder


# ---------------------------------------------------------------- row 1: bad files
# The reader itself is covered file by file in test_io.py (test_zero_byte_file,
# test_truncated_file, test_not_an_image); these rows check what the commands do with them.


def _source_with_bad_files(root: Path, split: str | None = None) -> Path:
    names = ["good1", *BAD_FILES, "good2"]
    make_source(root, names, split=split)
    for name, (write, _) in BAD_FILES.items():
        write(root / "images" / f"{name}.png")
    return root


def test_bad_files_preprocess(tmp_path, capsys):
    source = _source_with_bad_files(tmp_path / "source")
    before = snapshot(source)
    out = tmp_path / "out"
    result = cli(capsys, preprocess_cli.main, "--dataset", "folder", "--source", source,
                 "--out", out, "--size", SIZE)
    failed(result, "3 file(s) failed", "no manifest written",
           *(f"{name}.png: {reason}" for name, (_, reason) in BAD_FILES.items()))
    assert not (out / preprocess_cli.MANIFEST).exists() and not part_files(out)
    # good samples are complete and readable (a fixed re-run resumes from them)
    assert sorted(p.name for p in (out / "images").iterdir()) == ["good1.png", "good2.png"]
    for folder in ("images", "vessels", "fov"):
        for path in (out / folder).iterdir():
            read_image(path)
    assert snapshot(source) == before


def test_bad_files_eval(tiny_run, tmp_path, capsys, earlier):
    source = _source_with_bad_files(tmp_path / "source")
    shutil.copytree(earlier, tmp_path / "out")  # an earlier eval's results in the same --out
    before, kept = snapshot(source), snapshot(tmp_path / "out")
    out = tmp_path / "out"
    result = cli(capsys, eval_cli.main, source / "images", "--run", tiny_run, "--out", out)
    failed(result, "3 of 5 photo(s) failed",
           *(f"{name}.png: {reason}" for name, (_, reason) in BAD_FILES.items()))
    for name in ("good1", "good2"):
        assert (out / f"{name}_overlay.png").exists()
    for name in BAD_FILES:
        assert not list(out.glob(f"{name}_*"))
    rows = pd.read_csv(out / "results.csv")
    assert (rows["status"] == "failed").sum() == 3
    assert not part_files(out)
    assert snapshot(source) == before
    assert all(snapshot(out)[k] == v for k, v in kept.items())


def test_bad_files_test(run_copy, tmp_path, capsys):
    source = _source_with_bad_files(tmp_path / "source", split="test")
    (source / "masks" / "good2.png").write_bytes(b"")  # a broken annotation is named too
    before, run_before = snapshot(source), snapshot(run_copy)
    out = tmp_path / "result"
    result = cli(capsys, test_cli.main, "--run", run_copy, "--dataset", "folder", "--source",
                 source, "--out", out)
    failed(result, "4 image(s) failed", "masks/good2.png: is empty",
           *(f"{name}.png: {reason}" for name, (_, reason) in BAD_FILES.items()))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 1 and len(summary["failures"]) == 4  # recorded, never hidden
    assert not part_files(out) and snapshot(source) == before
    # when no image at all can be evaluated, no result folder is left in RUN/tests/
    (source / "images" / "good1.png").write_bytes(b"")
    result = cli(capsys, test_cli.main, "--run", run_copy, "--dataset", "folder", "--source",
                 source)
    failed(result, "no image could be evaluated", "good1.png", code=3)
    assert not (run_copy / "tests").exists() or not list((run_copy / "tests").iterdir())
    assert snapshot(run_copy) == run_before


# ---------------------------------------------------------------- row 2: bombs
# Reader level: test_io.py::test_decompression_bomb_png and ::test_decompression_bomb_gzip.


def test_decompression_bomb_preprocess(tmp_path, capsys):
    source = make_source(tmp_path / "source", ["good", "bomb"])
    bomb_png(source / "images" / "bomb.png")
    before = snapshot(source)
    out = tmp_path / "out"
    result = cli(capsys, preprocess_cli.main, "--dataset", "folder", "--source", source,
                 "--out", out, "--size", SIZE)
    failed(result, "bomb.png: refused as a decompression bomb", "1 file(s) failed")
    assert not (out / preprocess_cli.MANIFEST).exists() and not part_files(out)
    assert snapshot(source) == before


def test_decompression_bomb_eval(tiny_run, tmp_path, capsys):
    source = make_source(tmp_path / "source", ["good"])
    bomb_png(source / "images" / "bomb.png")
    out = tmp_path / "out"
    result = cli(capsys, eval_cli.main, source / "images", "--run", tiny_run, "--out", out)
    failed(result, "bomb.png: refused as a decompression bomb", "1 of 2 photo(s) failed")
    assert (out / "good_mask.png").exists() and not list(out.glob("bomb_*"))


# ---------------------------------------------------------------- row 3: formats
# Reader level: test_io.py (test_grayscale_is_replicated, test_rgba_is_composited_on_black,
# test_palette_image, test_16bit_*, test_one_bit_image, test_exif_orientation_is_applied,
# test_cmyk_jpeg). Here the whole commands must accept them.


def _write_formats(images: Path, masks: Path | None) -> dict[str, tuple[int, int]]:
    """One photo per format; returns stem -> (height, width) as displayed."""
    images.mkdir(parents=True, exist_ok=True)
    shapes = {}
    writers = ["gray", "rgba", "palette", "deep16", "onebit", "exif", "cmyk"]
    for index, stem in enumerate(writers):
        sample = generate_fundus(300 + index, SIZE)
        image, vessels = sample.image, sample.vessels
        if stem == "gray":
            Image.fromarray(image[..., 1]).save(images / "gray.png")
        elif stem == "rgba":
            alpha = np.where(sample.fov, 255, 0).astype(np.uint8)
            Image.fromarray(np.dstack([image, alpha]), "RGBA").save(images / "rgba.png")
        elif stem == "palette":
            Image.fromarray(image).convert("P").save(images / "palette.png")
        elif stem == "deep16":  # 12-bit data in a 16-bit RGB PNG
            assert cv2.imwrite(str(images / "deep16.png"),
                               (image.astype(np.uint16) * 16)[..., ::-1])
        elif stem == "onebit":
            Image.fromarray(image[..., 0] > 40).save(images / "onebit.png")
        elif stem == "exif":  # stored on its side; orientation 6 turns it back to 48x64
            image, vessels = image[8:56], vessels[8:56]
            stored = Image.fromarray(np.ascontiguousarray(np.rot90(image, 1)))
            exif = stored.getexif()
            exif[0x0112] = 6
            stored.save(images / "exif.jpg", exif=exif, quality=95)
        elif stem == "cmyk":
            Image.fromarray(image).convert("CMYK").save(images / "cmyk.jpg", quality=95)
        if masks is not None:
            write_png(masks / f"{stem}.png", vessels)
        shapes[stem] = vessels.shape
    with Image.open(images / "cmyk.jpg") as im:
        assert im.mode == "CMYK"
    with Image.open(images / "onebit.png") as im:
        assert im.mode == "1"
    return shapes


def test_formats_preprocess(tmp_path, capsys):
    source = tmp_path / "source"
    shapes = _write_formats(source / "images", source / "masks")
    out = tmp_path / "out"
    result = cli(capsys, preprocess_cli.main, "--dataset", "folder", "--source", source,
                 "--out", out, "--size", SIZE, "--val-fraction", 0)
    assert result.code == 0, result.err
    manifest = preprocess_cli.load_manifest(out)
    assert sorted(manifest["id"]) == sorted(shapes)
    for row in manifest.itertuples():
        assert (row.native_height, row.native_width) == shapes[row.id], row.id
        image = read_image(row.image)
        assert image.shape == (SIZE, SIZE, 3) and image.max() > 100, row.id  # not black
        assert read_mask(row.vessels).any(), row.id
    assert not part_files(out)


def test_formats_eval(tiny_run, tmp_path, capsys):
    shapes = _write_formats(tmp_path / "photos", None)
    out = tmp_path / "out"
    result = cli(capsys, eval_cli.main, tmp_path / "photos", "--run", tiny_run, "--out", out)
    assert result.code == 0, result.err
    assert result.out.count("vessel density") == len(shapes)
    for stem, shape in shapes.items():
        for kind in ("probability", "mask", "overlay"):
            assert read_image(out / f"{stem}_{kind}.png").shape[:2] == shape, (stem, kind)


# ---------------------------------------------------------------- row 4: annotations
# preprocess with another size: also test_preprocess.py::test_annotation_of_another_size.


def _annotation(kind: str, path: Path) -> None:
    vessels = read_mask(path)
    if kind == "other-size":
        write_png(path, np.zeros((40, 50), np.uint8))
    elif kind == "non-binary":  # e.g. an annotation saved as JPEG: gray levels around 0 and 200
        noise = np.random.default_rng(0).integers(0, 40, vessels.shape)
        write_png(path, np.where(vessels, 190 + noise // 4, noise).astype(np.uint8))
    elif kind == "all-zero":
        write_png(path, np.zeros(vessels.shape, np.uint8))


ANNOTATION_CASES = {"other-size": "has size 50x40 but its image is 64x64",
                    "non-binary": "not binary", "all-zero": "no foreground pixel"}


@pytest.mark.parametrize("kind", list(ANNOTATION_CASES))
def test_annotation_preprocess(kind, tmp_path, capsys):
    source = make_source(tmp_path / "source", ["a", "b", "c"])
    _annotation(kind, source / "masks" / "b.png")
    before = snapshot(source)
    out = tmp_path / "out"
    result = cli(capsys, preprocess_cli.main, "--dataset", "folder", "--source", source,
                 "--out", out, "--size", SIZE)
    assert f"masks/b.png: {ANNOTATION_CASES[kind]}" in result.err, result.err
    if kind == "other-size":  # unusable: stop
        failed(result, "1 file(s) failed")
        assert not (out / preprocess_cli.MANIFEST).exists()
    else:  # usable as documented (threshold 128), but the user is told
        assert result.code == 0 and "warning:" in result.err and "wrote" in result.out
        vessels = read_mask(out / "vessels" / "b.png")
        assert vessels.any() == (kind == "non-binary")
    assert not part_files(out)
    assert snapshot(source) == before


@pytest.mark.parametrize("kind", list(ANNOTATION_CASES))
def test_annotation_test(kind, tiny_run, tmp_path, capsys):
    source = make_source(tmp_path / "source", ["a", "b", "c"], split="test")
    _annotation(kind, source / "masks" / "b.png")
    before, run_before = snapshot(source), snapshot(tiny_run / "best.keras")
    out = tmp_path / "result"
    result = cli(capsys, test_cli.main, "--run", tiny_run, "--dataset", "folder", "--source",
                 source, "--out", out, "--no-images")
    assert f"masks/b.png: {ANNOTATION_CASES[kind]}" in result.err, result.err
    summary = json.loads((out / "summary.json").read_text())
    table = pd.read_csv(out / "metrics.csv")
    if kind == "other-size":
        failed(result, "1 image(s) failed")
        assert summary["failures"] and "b" not in set(table["id"])
    else:
        assert result.code == 0 and "warning:" in result.err
        assert summary["warnings"] and "b.png" in summary["warnings"][0]
        row = table[table["id"] == "b"].iloc[0]
        assert np.isfinite(row[["accuracy", "f1", "iou", "mcc"]].astype(float)).all()
        if kind == "all-zero":  # AUCs of a single-class image are undefined: empty, not NaN text
            assert pd.isna(row["auc_roc"])
    assert snapshot(source) == before and snapshot(tiny_run / "best.keras") == run_before


# ---------------------------------------------------------------- row 5: folders
# Also test_preprocess.py::test_missing_and_empty_source_folders,
# test_test.py::test_missing_annotation_folder, test_eval.py::test_empty_folder_and_missing_input.


def _folder_case(kind: str, root: Path) -> Path:
    if kind == "empty-folder":
        root.mkdir(parents=True)
    elif kind == "no-images":
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        (root / "images" / "notes.txt").write_text("no photos here")
        (root / "images" / ".hidden.png").write_bytes(b"")
    elif kind == "missing-annotations":
        make_source(root, ["a", "b"], split="test")
        shutil.rmtree(root / "masks")
    return root


FOLDER_CASES = {"empty-folder": "expected an images/ folder",
                "no-images": "no image files found",
                "missing-annotations": "annotation folder is missing"}


@pytest.mark.parametrize("kind", list(FOLDER_CASES))
def test_folder_preprocess(kind, tmp_path, capsys):
    source = _folder_case(kind, tmp_path / "source")
    # an earlier, complete output: even --overwrite must not destroy it when the source is bad
    out = tmp_path / "out"
    good = make_source(tmp_path / "good", ["x", "y"])
    assert cli(capsys, preprocess_cli.main, "--dataset", "folder", "--source", good,
               "--out", out, "--size", SIZE).code == 0
    before, kept = snapshot(source), snapshot(out)
    result = cli(capsys, preprocess_cli.main, "--dataset", "folder", "--source", source,
                 "--out", out, "--size", SIZE, "--overwrite")
    failed(result, FOLDER_CASES[kind], str(source))
    assert snapshot(out) == kept and snapshot(source) == before
    fresh = tmp_path / "fresh"
    failed(cli(capsys, preprocess_cli.main, "--dataset", "folder", "--source", source,
               "--out", fresh, "--size", SIZE), FOLDER_CASES[kind])
    assert not fresh.exists()


@pytest.mark.parametrize("kind", list(FOLDER_CASES))
def test_folder_test(kind, tiny_run, tmp_path, capsys):
    source = _folder_case(kind, tmp_path / "source")
    before = snapshot(source)
    out = tmp_path / "result"
    result = cli(capsys, test_cli.main, "--run", tiny_run, "--dataset", "folder", "--source",
                 source, "--out", out)
    failed(result, FOLDER_CASES[kind], str(source))
    assert not out.exists() and snapshot(source) == before


EVAL_FOLDER_CASES = {"empty-folder": "folder contains no image files",
                     "no-images": "folder contains no image files",
                     "missing-folder": "no such file or folder"}  # eval needs no annotations


@pytest.mark.parametrize("kind", list(EVAL_FOLDER_CASES))
def test_folder_eval(kind, tiny_run, tmp_path, capsys):
    folder = tmp_path / "photos"
    if kind == "empty-folder":
        folder.mkdir()
    elif kind == "no-images":
        folder = _folder_case("no-images", tmp_path / "source") / "images"
    out = tmp_path / "out"
    result = cli(capsys, eval_cli.main, folder, "--run", tiny_run, "--out", out)
    failed(result, EVAL_FOLDER_CASES[kind], str(folder), code=3)
    assert not out.exists()


# ---------------------------------------------------------------- row 6: unicode names
# Reader/writer level: test_io.py::test_unusual_file_names, ::test_write_png_non_ascii_path.

UNICODE_NAMES = ["patient 1 é", "眼底 2", "Øre ü 3", "a b 4", "çà 5"]


@pytest.fixture(scope="module")
def unicode_tree(tmp_path_factory):
    """preprocess -> train -> test -> eval, every path with spaces and non-ASCII characters.
    Each step's (exit code, stdout, stderr) is kept for its own test below."""
    root = tmp_path_factory.mktemp("unicode") / "données rétine 眼底"
    source = make_source(root / "source ü", UNICODE_NAMES, suffix=".jpg")
    (source / "split.csv").write_text(f"id,split\n{UNICODE_NAMES[0]},test\n", encoding="utf-8")
    steps = {}

    def step(name, main, *argv):
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main([str(a) for a in argv])
        steps[name] = Result(code, stdout.getvalue(), stderr.getvalue())

    data, runs = root / "prétraité 眼", root / "runs ü"
    step("preprocess", preprocess_cli.main, "--dataset", "folder", "--source", source,
         "--out", data, "--size", SIZE, "--val-fraction", 0.25)
    step("train", train_cli.main, "--data", data, "--runs-dir", runs, "--run-name", "essai é 眼",
         "--epochs", 1, "--steps-per-epoch", 1, "--batch-size", 2, "--base-filters", 4,
         "--depth", 2, "--quiet")
    run = next(runs.iterdir(), None) if runs.is_dir() else None
    if run is not None:
        step("test", test_cli.main, "--run", run, "--data", data, "--out", root / "résultat 眼")
        step("eval", eval_cli.main, source / "images", "--run", run, "--out", root / "sortie 眼")
    return {"root": root, "source": source, "data": data, "run": run, "steps": steps}


def test_unicode_names_preprocess(unicode_tree):
    result = unicode_tree["steps"]["preprocess"]
    assert result.code == 0, result.err
    manifest = preprocess_cli.load_manifest(unicode_tree["data"])
    assert sorted(manifest["id"]) == sorted(UNICODE_NAMES)
    for row in manifest.itertuples():
        assert read_image(row.image).shape == (SIZE, SIZE, 3)
        assert Path(row.native_image).is_file()


def test_unicode_names_train(unicode_tree):
    result = unicode_tree["steps"]["train"]
    assert result.code == 0, result.err
    run = unicode_tree["run"]
    assert "essai é 眼" in run.name
    for name in ("config.json", "best.keras", "history.csv", "threshold.json", "status.json"):
        assert (run / name).exists(), name


def test_unicode_names_test(unicode_tree):
    result = unicode_tree["steps"]["test"]
    assert result.code == 0, result.err
    out = unicode_tree["root"] / "résultat 眼"
    assert list(pd.read_csv(out / "metrics.csv")["id"])[0] == UNICODE_NAMES[0]
    assert (out / "masks" / f"{UNICODE_NAMES[0]}.png").exists()


def test_unicode_names_eval(unicode_tree):
    result = unicode_tree["steps"]["eval"]
    assert result.code == 0, result.err
    out = unicode_tree["root"] / "sortie 眼"
    for name in UNICODE_NAMES:
        assert read_image(out / f"{name}_overlay.png").shape == (SIZE, SIZE, 3)
        assert name in result.out


# ---------------------------------------------------------------- row 7: unwritable
# Tests run as root, where chmod 0o500 does not stop writes: "not writable" is a path below a
# regular file (fails even as root) and a mocked PermissionError; "disk full" is a mocked
# OSError(ENOSPC) raised half-way through an atomic write.

UNWRITABLE = {"parent-is-a-file": "Not a directory", "permission-denied": "Permission denied",
              "disk-full": "No space left on device"}


def _unwritable(kind: str, monkeypatch, tmp_path: Path, target: Path, only: str = "") -> Path:
    """The output path to pass for case `kind` (mocks installed for the mocked cases)."""
    if kind == "parent-is-a-file":
        blocker = tmp_path / "a file"
        blocker.write_text("not a folder\n")
        return blocker / target.name
    fail_writes(monkeypatch, target, errno.EACCES if kind == "permission-denied" else
                errno.ENOSPC, only)
    return target


@pytest.mark.parametrize("kind", list(UNWRITABLE))
def test_unwritable_output_preprocess(kind, tmp_path, monkeypatch, capsys, earlier):
    source = make_source(tmp_path / "source", ["a", "b"])
    before, kept = snapshot(source), snapshot(earlier)
    # permission denied from the first write on; disk full only once the PNGs are written
    out = _unwritable(kind, monkeypatch, tmp_path, tmp_path / "out",
                      only=".png" if kind == "disk-full" else "")
    result = cli(capsys, preprocess_cli.main, "--dataset", "folder", "--source", source,
                 "--out", out, "--size", SIZE)
    failed(result, UNWRITABLE[kind], str(out))
    if kind == "disk-full":  # settings kept, samples failed, no manifest: a re-run resumes
        assert "2 file(s) failed" in result.err and "cannot write its output" in result.err
        assert not (out / preprocess_cli.MANIFEST).exists()
        assert not [p for p in out.rglob("*.png")] and not part_files(out)
        monkeypatch.undo()
        rerun = cli(capsys, preprocess_cli.main, "--dataset", "folder", "--source", source,
                    "--out", out, "--size", SIZE)
        assert rerun.code == 0 and len(preprocess_cli.load_manifest(out)) == 2
    else:
        assert not out.exists()  # no empty output folder left behind
    assert snapshot(source) == before and snapshot(earlier) == kept


@pytest.mark.parametrize("kind", list(UNWRITABLE))
def test_unwritable_output_eval(kind, tiny_run, tmp_path, monkeypatch, capsys):
    source = make_source(tmp_path / "source", ["a", "b"])
    before = snapshot(source)
    # disk full when the last output (overlay) of each photo is written
    out = _unwritable(kind, monkeypatch, tmp_path, tmp_path / "out",
                      only="_overlay" if kind == "disk-full" else "")
    result = cli(capsys, eval_cli.main, source / "images", "--run", tiny_run, "--out", out)
    failed(result, UNWRITABLE[kind], str(out), code=3)
    if kind == "disk-full":  # the photos' other outputs were removed: all three or none
        assert "cannot write outputs" in result.err and "none of the 2 photo(s)" in result.err
        assert sorted(p.name for p in out.iterdir()) == ["results.csv", "summary.json"]
        assert list(pd.read_csv(out / "results.csv")["status"]) == ["failed", "failed"]
    elif kind == "permission-denied":
        assert "summary.json" in result.err
        assert not out.exists()
    else:
        assert not out.exists()
    assert not part_files(tmp_path) and snapshot(source) == before


@pytest.mark.parametrize("kind", list(UNWRITABLE))
def test_unwritable_output_train(kind, synthetic_preprocessed, tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    old = runs / "20200101-000000_old"  # an earlier run: must stay untouched
    old.mkdir(parents=True)
    (old / "status.json").write_text(json.dumps({"state": "finished"}))
    kept, data_before = snapshot(runs), snapshot(synthetic_preprocessed / "manifest.csv")
    runs_dir = _unwritable(kind, monkeypatch, tmp_path, runs)
    result = cli(capsys, train_cli.main, "--data", synthetic_preprocessed, "--runs-dir", runs_dir,
                 "--epochs", 1, "--base-filters", 4, "--depth", 2, "--quiet")
    failed(result, UNWRITABLE[kind], str(runs_dir))
    if kind != "parent-is-a-file":
        assert "config.json" in result.err
        assert [p.name for p in runs.iterdir()] == [old.name]  # no half-made run folder
    assert snapshot(runs) == kept and not part_files(tmp_path)
    assert snapshot(synthetic_preprocessed / "manifest.csv") == data_before


# ---------------------------------------------------------------- row 8: killed preprocess
# Also test_preprocess.py::test_resume_after_a_kill (stray .part file made by hand).


class SimulatedKill(BaseException):
    """Raised where a SIGKILL would stop the process (not an Exception: nothing catches it)."""


def test_preprocess_killed_then_rerun(tmp_path, monkeypatch, capsys):
    source = make_source(tmp_path / "source", [f"img{i}" for i in range(5)])
    out = tmp_path / "out"
    real, lock, calls = vio.write_bytes_atomic, threading.Lock(), []

    def write(path, data):
        """The 8th write dies half-way, as SIGKILL would: its .part file stays behind, and
        nothing is written afterwards (the process is gone)."""
        with lock:
            calls.append(path)
            count = len(calls)
        if count < 8:
            return real(path, data)
        if count == 8:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            (path.parent / f".{path.name}.killed.part").write_bytes(data[: len(data) // 2])
        raise SimulatedKill

    monkeypatch.setattr(vio, "write_bytes_atomic", write)
    with pytest.raises(SimulatedKill):
        preprocess_cli.preprocess_dataset("folder", source, out, PreprocessConfig(size=SIZE),
                                          workers=1, progress=False)
    monkeypatch.undo()
    assert part_files(out) and not (out / preprocess_cli.MANIFEST).exists()
    result = cli(capsys, preprocess_cli.main, "--dataset", "folder", "--source", source,
                 "--out", out, "--size", SIZE)
    assert result.code == 0 and "wrote" in result.out, result.err
    manifest = preprocess_cli.load_manifest(out)
    assert sorted(manifest["id"]) == [f"img{i}" for i in range(5)]
    for row in manifest.itertuples():  # every file complete and decodable
        assert read_image(row.image).shape == (SIZE, SIZE, 3)
        assert read_mask(row.vessels).shape == read_mask(row.fov).shape == (SIZE, SIZE)
    assert not part_files(out)


def test_preprocess_sigkilled_then_rerun(tmp_path):
    """The real thing: a preprocess subprocess SIGKILLed after its 3rd sample (at an exact
    point, through preprocess_dataset's on_sample_done, with its worker threads mid-write),
    then re-run."""
    import subprocess
    import sys

    source = make_source(tmp_path / "source", [f"img{i}" for i in range(8)])
    out = tmp_path / "out"
    command = [sys.executable, "-m", "vesselseg.preprocess", "--dataset", "folder", "--source",
               str(source), "--out", str(out), "--size", str(SIZE)]
    killer = ("import os, signal, sys\n"
              "from vesselseg.config import PreprocessConfig\n"
              "from vesselseg.preprocess import preprocess_dataset\n"
              "def kill(rows):\n"
              "    if rows == 3: os.kill(os.getpid(), signal.SIGKILL)\n"
              f"preprocess_dataset('folder', {str(source)!r}, {str(out)!r}, "
              f"PreprocessConfig(size={SIZE}), progress=False, on_sample_done=kill)\n")
    killed = subprocess.run([sys.executable, "-c", killer], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]  # SIGKILL
    assert not (out / preprocess_cli.MANIFEST).exists()
    rerun = subprocess.run(command, capture_output=True, text=True)
    assert rerun.returncode == 0 and "wrote" in rerun.stdout, rerun.stderr[-2000:]
    manifest = preprocess_cli.load_manifest(out)
    assert sorted(manifest["id"]) == [f"img{i}" for i in range(8)]
    for row in manifest.itertuples():  # every file complete and decodable
        assert read_image(row.image).shape == (SIZE, SIZE, 3)
        assert read_mask(row.vessels).shape == read_mask(row.fov).shape == (SIZE, SIZE)
    assert not part_files(out)


# ---------------------------------------------------------------- row 9: killed training
# The real thing (a training subprocess SIGKILLed after epoch 2 by a callback, then re-run:
# resumes at epoch 3 in the same folder) is
# test_train.py::test_a_killed_run_resumes_at_the_right_epoch; not repeated here (two trainings
# in subprocesses). Kills at other moments (mid-write of the resume state, between the state and
# history.csv, after fit but before the run is finished) and a truncated state file are
# test_train.py::test_a_damaged_resume_state_falls_back_to_the_one_before and ::test_a_kill_*
# (in-process, a BaseException where the SIGKILL would be). This cheap check covers what a
# re-run sees after the kill.


def test_train_killed_state_is_resumed(synthetic_preprocessed, tmp_path):
    from dataclasses import replace

    config = tiny_config(synthetic_preprocessed, tmp_path / "runs")
    config = replace(config, preprocess=preprocess_cli.load_preprocess_config(
        synthetic_preprocessed))
    from vesselseg.runs import RunFolder, config_fingerprint

    run = RunFolder.create(config)  # what a run killed after 2 epochs leaves
    run.save_config(config)
    run.update_status(state="running", fingerprint=config_fingerprint(config))
    pd.DataFrame({"epoch": [0, 1], "loss": [0.9, 0.8], "val_dice": [0.2, 0.3]}).to_csv(
        run.history_path, index=False)
    assert RunFolder.find_unfinished(config) == run
    assert run.best_validation_dice() == pytest.approx(0.3)  # checkpoint threshold
    other = replace(config, learning_rate=0.5)  # another config never resumes it
    assert RunFolder.find_unfinished(other) is None
    run.update_status(state="finished")  # a finished run is never touched again
    assert RunFolder.find_unfinished(config) is None


# ---------------------------------------------------------------- row 10: NaN loss
# Also test_train.py::test_nan_loss_stops_with_a_clear_message (NaN from the first epoch).


def test_train_nan_loss_keeps_best_model(synthetic_preprocessed, tmp_path, monkeypatch, capsys):
    import keras

    from vesselseg.backends import load_keras_model

    class PoisonAfterFirstEpoch(keras.callbacks.Callback):
        """Epoch 1 trains normally (best.keras saved); then the weights become NaN."""

        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                for weight in self.model.trainable_weights:
                    weight.assign(np.full(weight.shape, np.nan, weight.dtype))

    real = train_cli.build_callbacks
    monkeypatch.setattr(train_cli, "build_callbacks",
                        lambda *a, **k: [*real(*a, **k), PoisonAfterFirstEpoch()])
    runs = tmp_path / "runs"
    result = cli(capsys, train_cli.main, "--data", synthetic_preprocessed, "--runs-dir", runs,
                 "--epochs", 3, "--steps-per-epoch", 1, "--batch-size", 2, "--base-filters", 4,
                 "--depth", 2, "--quiet")
    (run,) = list(runs.iterdir())
    failed(result, "the loss became NaN/inf at epoch 2", "best model so far is kept",
           str(run / "best.keras"))
    model = load_keras_model(run / "best.keras")  # the epoch-1 model, intact
    assert all(np.isfinite(np.asarray(w)).all() for w in model.weights)
    assert json.loads((run / "status.json").read_text())["state"] == "diverged"
    assert not part_files(run)


# ---------------------------------------------------------------- row 11: model with code
# Loader level: test_inference.py::test_lambda_layer_is_refused_by_safe_mode.

PROBE_MODULE = "vesselseg_untrusted_probe"


def _model_with_code(kind: str, path: Path, marker: Path) -> None:
    import keras

    inputs = keras.Input((None, None, 3))
    if kind == "lambda-layer":
        outputs = keras.layers.Lambda(lambda x: x[..., :1] * 0.0 + 0.5)(inputs)
        keras.Model(inputs, outputs).save(path)
        return
    # "other code": a Conv2D whose activation is a function of an outside module; the module
    # would leave `marker` behind if it were ever imported.
    (marker.parent / f"{PROBE_MODULE}.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n"
        f"def activation(x):\n    return x\n")
    keras.Model(inputs, keras.layers.Conv2D(1, 1, activation="sigmoid")(inputs)).save(path)
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(files["config.json"])
    conv = next(layer for layer in config["config"]["layers"] if layer["class_name"] == "Conv2D")
    conv["config"]["activation"] = {"module": PROBE_MODULE, "class_name": "function",
                                    "config": "activation", "registered_name": "function"}
    files["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)


@pytest.fixture(params=["lambda-layer", "other-code"])
def run_with_code(request, run_copy, tmp_path, monkeypatch):
    marker = tmp_path / "code was run"
    monkeypatch.syspath_prepend(str(tmp_path))
    _model_with_code(request.param, run_copy / "best.keras", marker)
    yield run_copy
    assert not marker.exists(), "the model file's code was imported or run"


def test_model_with_code_test(run_with_code, synthetic_preprocessed, capsys):
    before = snapshot(run_with_code)
    result = cli(capsys, test_cli.main, "--run", run_with_code, "--data", synthetic_preprocessed)
    failed(result, str(run_with_code / "best.keras"), "refused by", "safe mode",
           "contains code")
    assert len(result.err.splitlines()) == 1  # one clear line, not a Keras config dump
    assert not (run_with_code / "tests").exists() and snapshot(run_with_code) == before


def test_model_with_code_eval(run_with_code, tmp_path, capsys):
    source = make_source(tmp_path / "source", ["a"])
    out = tmp_path / "out"
    result = cli(capsys, eval_cli.main, source / "images", "--run", run_with_code, "--out", out)
    failed(result, str(run_with_code / "best.keras"), "safe mode", "contains code", code=3)
    assert len(result.err.splitlines()) == 1
    assert not out.exists()


# ---------------------------------------------------------------- row 12: bad config
# Also test_train.py::test_config_file_with_unknown_key_names_it and
# ::test_config_file_with_wrong_type_names_the_key; test_config.py for from_dict itself.

BAD_CONFIGS = {
    "unknown-key": ({"epochs": 2, "learnig_rate": 0.1}, ["learnig_rate", "unknown key"]),
    "unknown-nested-key": ({"augment": {"flip": True}}, ["augment.flip", "unknown key"]),
    "wrong-type": ({"epochs": "many"}, ["epochs", "expected an integer", "'many'"]),
    "wrong-nested-type": ({"augment": {"flips": "yes"}}, ["augment.flips", "true/false"]),
    "wrong-section-type": ({"preprocess": 512}, ["preprocess", "expected a mapping"]),
}


@pytest.mark.parametrize("kind", list(BAD_CONFIGS))
def test_train_bad_config(kind, synthetic_preprocessed, tmp_path, capsys):
    values, fragments = BAD_CONFIGS[kind]
    path = tmp_path / "my config.json"
    path.write_text(json.dumps({"runs_dir": str(tmp_path / "runs"), **values}))
    result = cli(capsys, train_cli.main, "--config", path, "--data", synthetic_preprocessed)
    failed(result, str(path), *fragments, code=2)  # a ConfigError: a usage error
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- fuzz
# read_image on random bytes (PNG/JPEG/TIFF/GIF/PPM/BMP headers): the property-based test is
# test_io.py::test_random_bytes_only_raise_image_read_error; not duplicated here. This one adds
# what it does not reach: read_mask (with an expected size) and the gzip path (.ppm.gz).


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=400),
       prefix=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"P5\n", b"P6\n12 12\n255\n"]),
       name=st.sampled_from(["fuzz.png", "fuzz.ppm.gz"]), compress=st.booleans())
def test_fuzz_mask_and_gzip_reader(tmp_path, body, prefix, name, compress):
    data = prefix + body
    path = tmp_path / name  # .gz names get gzip data or raw bytes; .png names get either too
    path.write_bytes(gzip.compress(data) if compress else data)
    for reader in (read_image, lambda p: read_mask(p, expected_shape=(12, 12), notes=[])):
        try:
            reader(path)
        except ImageReadError as exc:
            assert path.name in str(exc)


# ---------------------------------------------------------------- issue #36: inputs
# Reader level: test_io.py (HDR/PAM size checks, proportions, TIFF orientation and sample
# formats, NaN, multi-frame notes); preprocess level: test_preprocess.py. Here: the commands.


def _hdr_bomb(path: Path) -> Path:
    """A 4 KB Radiance HDR named .png whose header declares 11000x11000 (OpenCV-only format)."""
    path.write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 11000 +X 11000\n" + bytes(4096))
    return path


def _reader_guard_source(root: Path) -> Path:
    make_source(root, ["good", "bomb", "strip"])
    _hdr_bomb(root / "images" / "bomb.png")
    write_png(root / "images" / "strip.png", np.full((8, 2000, 3), 90, np.uint8))
    write_png(root / "masks" / "strip.png", np.zeros((8, 2000), np.uint8))
    return root


def test_reader_guards_preprocess(tmp_path, capsys):
    source = _reader_guard_source(tmp_path / "source")
    before = snapshot(source)
    out = tmp_path / "out"
    result = cli(capsys, preprocess_cli.main, "--dataset", "folder", "--source", source,
                 "--out", out, "--size", SIZE)
    failed(result, "bomb.png: declares 11000x11000 pixels", "strip.png: is 2000x8 pixels",
           "roughly square", "2 file(s) failed")
    assert not (out / preprocess_cli.MANIFEST).exists() and not part_files(out)
    assert snapshot(source) == before
    # a multi-page TIFF is used (its first page) with a warning naming it
    shutil.rmtree(out)
    for name in ("bomb", "strip"):
        (source / "images" / f"{name}.png").unlink()
    pages = [Image.fromarray(generate_fundus(9 + k, SIZE).image) for k in range(2)]
    pages[0].save(source / "images" / "pages.tif", save_all=True, append_images=pages[1:])
    write_png(source / "masks" / "pages.png", generate_fundus(9, SIZE).vessels)
    result = cli(capsys, preprocess_cli.main, "--dataset", "folder", "--source", source,
                 "--out", out, "--size", SIZE)
    assert result.code == 0, result.err
    assert "warning: " in result.err and "pages.tif: holds 2 frames" in result.err


def test_reader_guards_eval(tiny_run, tmp_path, capsys):
    source = _reader_guard_source(tmp_path / "source")
    out = tmp_path / "out"
    result = cli(capsys, eval_cli.main, source / "images", "--run", tiny_run, "--out", out)
    failed(result, "bomb.png: declares 11000x11000 pixels", "strip.png: is 2000x8 pixels")
    assert (out / "good_mask.png").exists() and not list(out.glob("bomb_*"))
    assert not list(out.glob("strip_*")) and not part_files(out)


@pytest.mark.parametrize("where", ["same", "inside", "containing"])
def test_out_overlaps_source_preprocess(where, tmp_path, capsys):
    source = make_source(tmp_path / "data" / "source", ["a", "b"])
    before = snapshot(tmp_path / "data")
    out = {"same": source, "inside": source / "out", "containing": tmp_path / "data"}[where]
    result = cli(capsys, preprocess_cli.main, "--dataset", "folder", "--source", source,
                 "--out", out, "--size", SIZE)
    failed(result, str(out), "--source")
    assert snapshot(tmp_path / "data") == before


def test_overwrite_failure_keeps_earlier_output(tmp_path, capsys):
    source = make_source(tmp_path / "source", ["a", "b", "c"])
    out = tmp_path / "out"
    base = ["--dataset", "folder", "--source", source, "--out", out, "--val-fraction", 0]
    assert cli(capsys, preprocess_cli.main, *base, "--size", SIZE).code == 0
    kept = snapshot(out)
    truncated_png(source / "images" / "b.png")
    result = cli(capsys, preprocess_cli.main, *base, "--size", 2 * SIZE, "--overwrite")
    failed(result, "b.png: is not a readable image", "keeps the earlier output, unchanged")
    assert snapshot(out) == kept and not part_files(out)


BAD_MANIFESTS = {
    "empty": (b"", "is empty"),
    "binary": (bytes(range(256)) * 4, "not a readable manifest"),
    "duplicate-id": (None, "appears 2 times"),
}


@pytest.mark.parametrize("kind", list(BAD_MANIFESTS))
def test_bad_manifest_train(kind, tmp_path, capsys):
    source = make_source(tmp_path / "source", ["a", "b", "c", "d"])
    data = tmp_path / "data"
    assert cli(capsys, preprocess_cli.main, "--dataset", "folder", "--source", source, "--out",
               data, "--size", SIZE).code == 0
    manifest = data / preprocess_cli.MANIFEST
    content, fragment = BAD_MANIFESTS[kind]
    if content is None:
        lines = manifest.read_text().splitlines()
        content = "\n".join([*lines, lines[-1]]).encode() + b"\n"
    manifest.write_bytes(content)
    runs = tmp_path / "runs"
    result = cli(capsys, train_cli.main, "--data", data, "--runs-dir", runs, "--epochs", 1)
    failed(result, str(manifest), fragment)
    assert not runs.exists()


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "latin-1"])
def test_train_config_not_utf8(encoding, tmp_path, capsys):
    path = tmp_path / "my recipe.json"
    text = json.dumps({"epochs": 2, "run_name": "équipe"}, ensure_ascii=False)
    path.write_bytes(text.encode(encoding))
    result = cli(capsys, train_cli.main, "--config", path, "--data", tmp_path / "data",
                 "--runs-dir", tmp_path / "runs")
    assert result.code == 2 and "error:" in result.err and "Traceback" not in result.err
    assert str(path) in result.err and "UTF-8" in result.err, result.err
    assert not (tmp_path / "runs").exists()
