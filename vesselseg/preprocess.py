"""`vesselseg preprocess`: read a dataset and write model-ready square PNGs and a manifest.

Output folder::

    manifest.csv      one row per sample: split, paths, native size, crop box, native annotation/FOV
    preprocess.json   the PreprocessConfig and where the data came from
    images/ vessels/ fov/   model-size PNGs (lossless); vessels/ holds how much of each
                            pixel the annotation covers (0-255), so >= 128 is the binary mask
    native_fov/       FOV masks estimated at native size (for datasets without official ones)

Files are written atomically, so a killed run leaves no corrupt file and a re-run resumes.

Nothing but its own outputs is ever replaced: `--out` may not be, contain or lie inside
`--source`; a non-empty folder without preprocess.json is refused; `--overwrite` replaces only
the files of an earlier preprocess (preprocess.json, manifest.csv and its PNG folders) and only
once the new output is complete: it is built in a sibling folder `.<out>.preprocess-new` and
swapped in at the end, so a failure half-way leaves the earlier output as it was.

Over 350 lines: preprocessing with its never-lose-data output handling (staging, swap, recovery)
and manifest validation, which must change together.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import random
import shutil
import sys
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from .cli import add_config_arguments, config_overrides, describe_os_error, run_cli
from .config import PreprocessConfig, from_dict
from .console import progress as console_progress
from .datasets import Sample, read_dataset, reader_names
from .datasets.base import SPLITS, source_folder
from .errors import DatasetError, ImageReadError, VesselsegError
from .fov import estimate_fov
from .io import is_plain_name, read_image, read_mask, write_png, write_text_atomic
from .locks import LOCK_NAME, hold_folder
from .transforms import coverage_to_model, to_model_input

MANIFEST = "manifest.csv"
SETTINGS = "preprocess.json"
#: The folders preprocess writes PNGs into (with MANIFEST and SETTINGS, all it ever writes).
OUTPUT_FOLDERS = ("images", "vessels", "fov", "native_fov")
#: A folder lock (vesselseg.locks) is no content: its file names start with this.
_LOCK_PREFIX = LOCK_NAME


@dataclass
class PreprocessReport:
    out: Path
    counts: dict[str, int]
    skipped: list[tuple[str, str]]
    failed: list[tuple[str, str]]
    reused: int
    #: Suspicious but usable inputs, one message naming the file each (e.g. an empty annotation).
    notes: list[str] = field(default_factory=list)
    #: With --overwrite and failures: where the unfinished new output waits (a re-run resumes
    #: it); `out` still holds the earlier output, unchanged.
    staging: Path | None = None


def assign_validation(samples: list[Sample], fraction: float, seed: int) -> list[Sample]:
    """Move a seeded `fraction` of the training samples (at least one if any) into 'val'."""
    train = [i for i, s in enumerate(samples) if s.split == "train"]
    if not train or fraction <= 0 or any(s.split == "val" for s in samples):
        return samples
    count = min(len(train) - 1, max(1, round(fraction * len(train))))
    chosen = set(random.Random(seed).sample(train, count)) if count > 0 else set()
    return [Sample(**{**asdict(s), "split": "val"}) if i in chosen else s
            for i, s in enumerate(samples)]


def augment_geometry(arrays: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """One seeded random rotation / flip / scaling applied identically to every array."""
    height, width = arrays[0].shape[:2]
    angle = float(rng.uniform(-180, 180))
    scale = float(rng.uniform(0.85, 1.15))
    flip = bool(rng.random() < 0.5)
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, scale)
    out = []
    for array in arrays:
        is_mask = array.dtype == bool
        source = array.astype(np.uint8) * 255 if is_mask else array
        warped = cv2.warpAffine(source, matrix, (width, height), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        if flip:
            warped = warped[:, ::-1]
        out.append(np.ascontiguousarray(warped >= 128 if is_mask else warped))
    return out


def _outputs(out: Path, sample_id: str) -> dict[str, Path]:
    return {"image": out / "images" / f"{sample_id}.png",
            "vessels": out / "vessels" / f"{sample_id}.png",
            "fov": out / "fov" / f"{sample_id}.png"}


def process_sample(sample: Sample, out: Path, config: PreprocessConfig,
                   notes: list[str] | None = None, final: Path | None = None) -> list[dict]:
    """Write one sample (and its offline augmentations); return its manifest rows.

    `notes` collects warnings about usable but suspicious inputs (not binary, all zero, several
    frames...). `final`: the folder `out` becomes once complete (the manifest's native paths
    name it), when `out` is a staging folder.
    """
    image = read_image(sample.image, notes=notes)
    shape = image.shape[:2]
    if sample.annotation is None:
        raise ImageReadError(sample.image, "has no annotation")
    vessels = read_mask(sample.annotation, expected_shape=shape, notes=notes)
    if sample.fov is not None:
        fov = read_mask(sample.fov, expected_shape=shape)
        if not fov.any():  # an all-black FOV would silently give a black, unusable sample
            raise ImageReadError(sample.fov, "FOV mask is empty (no pixel inside the FOV)")
        native_fov, fov_source = sample.fov, "official"
    else:
        fov = estimate_fov(image)
        written = out / "native_fov" / f"{sample.id}.png"
        if not written.exists():
            write_png(written, fov)
        native_fov, fov_source = (final or out) / "native_fov" / f"{sample.id}.png", "estimated"
    model_image, model_fov, box = to_model_input(image, fov, config)
    model_vessels = coverage_to_model(vessels & fov, box, config.size) * model_fov
    base = {"dataset": sample.dataset, "split": sample.split, "native_width": shape[1],
            "native_height": shape[0], "crop_x0": box.x0, "crop_y0": box.y0, "crop_x1": box.x1,
            "crop_y1": box.y1, "native_image": str(sample.image.resolve()),
            "native_annotation": str(sample.annotation.resolve()),
            "native_fov": str(Path(native_fov).resolve()), "fov_source": fov_source,
            "second_observer": str(sample.second_observer.resolve()) if sample.second_observer
            else ""}
    variants = [(sample.id, model_image, model_vessels, model_fov, "")]
    if sample.split == "train" and config.augment:
        rng = np.random.default_rng(config.seed * 1_000_003 + _stable_hash(sample.id))
        for k in range(config.augment):
            aug_image, aug_vessels, aug_fov = augment_geometry(
                [model_image, model_vessels, model_fov], rng)
            variants.append((f"{sample.id}_aug{k + 1}", aug_image, aug_vessels * aug_fov,
                             aug_fov, sample.id))
    rows = []
    for variant_id, img, ves, fv, parent in variants:
        paths = _outputs(out, variant_id)
        if not all(p.exists() for p in paths.values()):
            write_png(paths["image"], img)
            write_png(paths["vessels"], ves)
            write_png(paths["fov"], fv)
        rows.append({"id": variant_id, **base,
                     **{k: str(p.relative_to(out)) for k, p in paths.items()},
                     "augment_of": parent})
    return rows


def _stable_hash(text: str) -> int:
    """A seed from the whole id, stable across runs (ids sharing a prefix get different seeds)."""
    return zlib.crc32(text.encode("utf-8")) % (2**31)


def _remove_stale_parts(out: Path) -> None:
    """Delete temporary `.name.XXXX.part` files a killed run left behind."""
    for folder in (out, *(out / name for name in OUTPUT_FOLDERS)):
        if folder.is_dir():
            for stale in folder.glob(".*.part"):
                stale.unlink(missing_ok=True)


def _read_settings(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise DatasetError(f"{path}: unreadable ({exc}); pass --overwrite to redo the folder") \
            from None


def _check_out_and_source(out: Path, source: Path) -> None:
    """--out may not be --source, lie inside it or contain it: the photos would be overwritten
    (or preprocessed outputs read back as photos)."""
    real_out, real_source = out.resolve(), source.resolve()
    if real_out == real_source:
        where = "is the --source folder itself"
    elif real_source in real_out.parents:
        where = "lies inside --source"
    elif real_out in real_source.parents:
        where = "contains --source"
    else:
        return
    raise DatasetError(f"--out {out} {where} ({source}): preprocess never writes among the "
                       f"original photos; choose an output folder outside it")


def _sibling(out: Path, kind: str) -> Path:
    """`.<out>.preprocess-new` (an output being built) or `-old` (one being replaced)."""
    real = out.resolve()
    return real.parent / f".{real.name}.preprocess-{kind}"


def _is_output(folder: Path) -> bool:
    """True for a folder preprocess wrote: it holds preprocess.json."""
    return (folder / SETTINGS).is_file()


def _output_state(out: Path) -> str:
    """'new' (absent or empty) or 'ours' (an earlier preprocess output); anything else is an
    error: preprocess replaces nothing it did not write."""
    if not out.exists():
        if out.is_symlink():
            raise DatasetError(f"{out}: a dangling symbolic link; choose another --out")
        return "new"
    if not out.is_dir():
        raise DatasetError(f"{out}: exists and is not a folder; choose another --out")
    if _is_output(out):
        return "ours"
    if any(not entry.name.startswith(_LOCK_PREFIX) for entry in out.iterdir()):
        raise DatasetError(f"{out}: not empty and holds no {SETTINGS}, so vesselseg preprocess "
                           f"did not write it; nothing in it is replaced, even with "
                           f"--overwrite: choose a new or empty --out")
    return "new"


def _foreign_files(out: Path) -> list[str]:
    """What an earlier output holds that preprocess did not write (paths relative to `out`).

    Recorded outputs: preprocess.json, manifest.csv, the PNGs the manifest names (every PNG of
    the output folders when no manifest was written yet), estimated native FOVs and the
    temporary `.part` files of a killed run."""
    recorded: set[str] | None = None
    if (out / MANIFEST).is_file():
        with contextlib.suppress(DatasetError):
            rows = _read_manifest(out / MANIFEST)
            recorded = {str(p) for column in ("image", "vessels", "fov") for p in rows[column]}
    foreign: list[str] = []
    for entry in sorted(out.iterdir()):
        name = entry.name
        if name in (SETTINGS, MANIFEST) and entry.is_file() and not entry.is_symlink():
            continue
        if name.startswith(_LOCK_PREFIX):
            continue
        if name.startswith(".") and name.endswith(".part") and entry.is_file():
            continue
        if name not in OUTPUT_FOLDERS or entry.is_symlink() or not entry.is_dir():
            foreign.append(name)
            continue
        for inner in sorted(entry.iterdir()):
            relative = f"{name}/{inner.name}"
            ours = inner.is_file() and not inner.is_symlink() and (
                (inner.name.startswith(".") and inner.name.endswith(".part"))
                or (inner.suffix == ".png" and (recorded is None or name == "native_fov"
                                                or relative in recorded)))
            if not ours:
                foreign.append(relative)
    return foreign


def _recover_interrupted_swap(out: Path) -> None:
    """Finish what a run killed while swapping a new output in left behind."""
    old = _sibling(out, "old")
    if not (old.is_dir() and _is_output(old)):
        return
    real = out.resolve()
    if not real.exists():  # killed between the two renames: the earlier output goes back
        os.rename(old, real)
    else:  # the new output is in place: the earlier one was about to be deleted
        shutil.rmtree(old)


def _swap_in(new: Path, out: Path) -> None:
    """Replace the earlier output `out` by the complete `new` (two renames, then a delete).

    The lock we hold on `out` goes into `new` first, so the folder stays held throughout."""
    real, old = out.resolve(), _sibling(out, "old")
    lock = real / LOCK_NAME
    if lock.exists():
        (new / LOCK_NAME).unlink(missing_ok=True)
        try:
            os.link(lock, new / LOCK_NAME)
        except OSError:  # no hard links here: a copy says the same
            shutil.copy2(lock, new / LOCK_NAME)
    os.rename(real, old)
    try:
        os.rename(new, real)
    except OSError:
        os.rename(old, real)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _settings_file(folder: Path, settings: dict, created: bool) -> None:
    """Write preprocess.json unless it already says the same (a finished folder stays
    untouched); leave no empty new folder behind when it cannot be written (disk full)."""
    with contextlib.suppress(DatasetError):
        if _read_settings(folder / SETTINGS) == settings:
            return
    try:
        write_text_atomic(folder / SETTINGS, json.dumps(settings, indent=2) + "\n")
    except OSError:
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def preprocess_dataset(dataset: str, source: str | Path | None, out: str | Path,
                       config: PreprocessConfig | None = None, overwrite: bool = False,
                       skip_missing: bool = False, workers: int = 2,
                       progress: bool = True,
                       on_sample_done: Callable[[int], None] | None = None) -> PreprocessReport:
    """Preprocess a dataset into `out`; the library function behind the CLI.

    `on_sample_done(rows_written)` is called after each finished sample (progress reporting,
    or a test killing the process at an exact point). An interrupt (Ctrl-C) cancels the
    samples not started yet and returns as soon as the running ones have written their files.

    `out` is held (vesselseg.locks) for the whole run: a second preprocess, or a train, into
    the same folder is refused with a message naming this one."""
    config = config or PreprocessConfig()
    out = Path(out)
    _check_out_and_source(out, source_folder(dataset, source))
    _recover_interrupted_swap(out)
    _output_state(out)  # a file or a foreign folder is refused before any lock is written in it
    with hold_folder(out, command="preprocess"):
        return _preprocess_held(dataset, source, out, config, overwrite, skip_missing, workers,
                                progress, on_sample_done)


def _preprocess_held(dataset: str, source: str | Path | None, out: Path,
                     config: PreprocessConfig, overwrite: bool, skip_missing: bool,
                     workers: int, progress: bool,
                     on_sample_done: Callable[[int], None] | None) -> PreprocessReport:
    settings = {"dataset": dataset, "source": str(Path(source).resolve()) if source else None,
                "config": asdict(config)}
    state = _output_state(out)
    if state == "ours" and not overwrite:
        old = _read_settings(out / SETTINGS)
        if old != settings:
            raise DatasetError(f"{out} already holds data preprocessed with other settings "
                               f"({out / SETTINGS}); choose another --out or pass --overwrite")
    if state == "ours" and overwrite:
        foreign = _foreign_files(out)
        if foreign:
            names = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more"
                                               if len(foreign) > 5 else "")
            raise DatasetError(f"{out}: holds files vesselseg preprocess did not write ({names});"
                               f" --overwrite replaces only its own outputs: move them away or "
                               f"choose another --out")
    result = read_dataset(dataset, source)
    missing_is_error = dataset in ("folder", "drive", "chase", "stare") and not skip_missing
    if result.skipped and missing_is_error:
        names = "; ".join(f"{path} ({why})" for path, why in result.skipped)
        raise DatasetError(f"images without annotation: {names}. Add the annotations or pass "
                           f"--skip-missing")
    samples = assign_validation(result.samples, config.val_fraction, config.seed)
    skipped = [(str(p), why) for p, why in result.skipped]
    work, final = out, None
    if state == "ours" and overwrite:  # built aside, swapped in once complete
        work, final = _sibling(out, "new"), out
        if work.exists():
            try:
                resumable = _read_settings(work / SETTINGS) == settings
            except DatasetError:
                resumable = False
            if not resumable:
                shutil.rmtree(work)
    created = not work.exists()
    work.mkdir(parents=True, exist_ok=True)
    _settings_file(work, settings, created)
    if (work / MANIFEST).exists():
        manifest = _read_manifest(work / MANIFEST)
        counts = manifest["split"].value_counts().to_dict()
        if final is None:
            return PreprocessReport(out, counts, skipped, [], len(manifest), list(result.notes))
        _swap_in(work, out)  # a run killed after its manifest: only the swap was missing
        return PreprocessReport(out, counts, skipped, [], 0, list(result.notes))

    _remove_stale_parts(work)
    rows: list[dict] = []
    failed: list[tuple[str, str]] = []
    notes: list[str] = []

    def task(sample: Sample) -> list[dict]:
        return process_sample(sample, work, config, notes, final)

    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        futures = [(s, pool.submit(task, s)) for s in samples]
        for sample, future in console_progress(futures, total=len(futures),
                                               desc=f"preprocess {dataset}", quiet=not progress):
            try:
                rows.extend(future.result())
                if on_sample_done is not None:
                    on_sample_done(len(rows))
            except VesselsegError as exc:
                failed.append((str(sample.image), str(exc)))
            except OSError as exc:  # reading is ImageReadError: this is an output (disk full...)
                failed.append((str(sample.image), f"{sample.image}: cannot write its output "
                                                  f"({describe_os_error(exc)})"))
            except (cv2.error, ValueError) as exc:
                failed.append((str(sample.image), f"{sample.image}: {exc}"))
    except BaseException:
        # Ctrl-C (or a kill from a callback): samples not started are cancelled at once, the
        # running ones finish their atomic writes; no queued work continues behind our back.
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    notes = sorted(set(notes)) + list(result.notes)
    if failed:
        return PreprocessReport(out, {}, skipped, failed, 0, notes,
                                staging=work if final is not None else None)
    manifest = pd.DataFrame(rows).sort_values(["split", "id"], kind="stable")
    write_text_atomic(work / MANIFEST, manifest.to_csv(index=False))
    if final is not None:
        _swap_in(work, out)
    return PreprocessReport(out, manifest["split"].value_counts().to_dict(), skipped, [], 0,
                            notes)


#: Columns every manifest has (preprocess writes more: native sizes, crop box, native paths).
MANIFEST_COLUMNS = ("id", "split", "image", "vessels", "fov")
_TEXT_COLUMNS = {name: str for name in (*MANIFEST_COLUMNS, "dataset", "native_image",
                                        "native_annotation", "native_fov", "fov_source",
                                        "second_observer", "augment_of")}


def _read_manifest(path: Path) -> pd.DataFrame:
    """A manifest checked row by row: any defect is a DatasetError naming the file (and line)."""
    redo = "run vesselseg preprocess again (with --overwrite)"
    try:
        manifest = pd.read_csv(path, keep_default_na=False, dtype=_TEXT_COLUMNS)
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{path}: the manifest is empty; {redo}") from None
    except (pd.errors.ParserError, UnicodeDecodeError, csv.Error, ValueError) as exc:
        reason = "binary data, not CSV text" if isinstance(exc, UnicodeDecodeError) else \
            str(exc).strip().splitlines()[0]
        raise DatasetError(f"{path}: not a readable manifest ({reason}); {redo}") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({describe_os_error(exc)})") from None
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise DatasetError(f"{path}: not a vesselseg manifest (no column {', '.join(missing)}; "
                           f"columns: {', '.join(map(str, manifest.columns[:8]))}); {redo}")
    if manifest.empty:
        raise DatasetError(f"{path}: the manifest has no rows; {redo}")
    duplicated = manifest["id"][manifest["id"].duplicated(keep=False)]
    if len(duplicated):
        first = duplicated.iloc[0]
        lines = [str(i + 2) for i in duplicated.index[duplicated == first]]
        raise DatasetError(f"{path}: id {first!r} appears {len(lines)} times (lines "
                           f"{', '.join(lines)}); ids must be unique. {redo[0].upper()}{redo[1:]}")
    for index, row in enumerate(manifest[list(MANIFEST_COLUMNS)].itertuples(index=False)):
        line = index + 2
        if not is_plain_name(row.id):
            raise DatasetError(f"{path}:{line}: id {row.id!r} is not a plain file name")
        if row.split not in SPLITS:
            raise DatasetError(f"{path}:{line}: split {row.split!r} is not one of {SPLITS}")
        for column in ("image", "vessels", "fov"):
            value = getattr(row, column)
            if not value or Path(value).is_absolute() or ".." in Path(value).parts:
                raise DatasetError(f"{path}:{line}: {column} {value!r} is not a path inside "
                                   f"the folder")
    return manifest


def load_manifest(folder: str | Path) -> pd.DataFrame:
    """The manifest of a preprocessed folder, with paths made absolute; a malformed, empty,
    non-CSV or duplicate-id manifest is a DatasetError naming the file."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.exists():
        raise DatasetError(f"{path}: no manifest; run `python -m vesselseg.preprocess` first")
    manifest = _read_manifest(path)
    for column in ("image", "vessels", "fov"):
        manifest[column] = [str(folder / p) for p in manifest[column]]
    return manifest


def merged_manifest(folders: list[str | Path]) -> pd.DataFrame:
    """One manifest of several preprocessed folders (their splits merged)."""
    return pd.concat([load_manifest(folder) for folder in folders], ignore_index=True)


def load_preprocess_config(folder: str | Path) -> PreprocessConfig:
    path = Path(folder) / SETTINGS
    if not path.exists():
        raise DatasetError(f"{path}: missing; is {folder} a preprocessed folder?")
    settings = _read_settings(path)
    if not isinstance(settings, dict) or not isinstance(settings.get("config"), dict):
        raise DatasetError(f"{path}: not a preprocess settings file (no 'config' object); "
                           f"run vesselseg preprocess again (with --overwrite)")
    return from_dict(PreprocessConfig, settings["config"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vesselseg preprocess",
        description="Read a fundus dataset and write square model inputs, vessel masks, FOV "
                    "masks and a manifest.csv (with native sizes for honest evaluation later).")
    parser.add_argument("--dataset", default="synthetic", choices=reader_names(),
                        help="dataset reader (default: synthetic, generated on the fly)")
    parser.add_argument("--source", default=None,
                        help="folder the dataset was unpacked in (synthetic: where to generate)")
    parser.add_argument("--out", required=True, help="output folder")
    add_config_arguments(parser, PreprocessConfig)
    parser.add_argument("--no-crop", dest="crop_to_fov", action="store_false", default=None,
                        help="same as --no-crop-to-fov")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output folder's contents")
    parser.add_argument("--skip-missing", action="store_true",
                        help="skip images without an annotation instead of stopping")
    return parser


def _main(args: argparse.Namespace) -> int:
    config = from_dict(PreprocessConfig, config_overrides(args, PreprocessConfig))
    report = preprocess_dataset(args.dataset, args.source, args.out, config,
                                overwrite=args.overwrite, skip_missing=args.skip_missing,
                                progress=not args.quiet)
    for path, why in report.skipped:  # never silently: a warning naming each image
        print(f"warning: skipped {path}: {why}", file=sys.stderr)
    for note in report.notes:
        print(f"warning: {note}", file=sys.stderr)
    if report.failed:
        for _path, why in report.failed:
            print(f"error: {why}", file=sys.stderr)
        kept = (f" {report.out} keeps the earlier output, unchanged; the new one waits in "
                f"{report.staging}." if report.staging else "")
        print(f"error: {len(report.failed)} file(s) failed; no manifest written.{kept} Fix or "
              f"remove them and re-run (finished samples are kept).", file=sys.stderr)
        return 1
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(report.counts.items()))
    if report.reused:  # nothing was written: do not claim so
        print(f"{report.out} is already complete ({report.reused} rows; {counts}); nothing to do "
              f"(pass --overwrite to redo it)")
        return 0
    lost = f"; {len(report.skipped)} image(s) skipped" if report.skipped else ""
    print(f"wrote {report.out / MANIFEST} ({counts}{lost})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
