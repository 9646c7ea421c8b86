"""`vesselseg preprocess`: read a dataset and write model-ready square PNGs and a manifest.

Output folder::

    manifest.csv      one row per sample: split, paths, native size, crop box, native annotation/FOV
    preprocess.json   the PreprocessConfig and where the data came from
    images/ vessels/ fov/   model-size PNGs (lossless); vessels/ holds how much of each
                            pixel the annotation covers (0-255), so >= 128 is the binary mask
    native_fov/       FOV masks estimated at native size (for datasets without official ones)

Files are written atomically, so a killed run leaves no corrupt file and a re-run resumes.
"""
from __future__ import annotations

import argparse
import contextlib
import json
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
from tqdm import tqdm

from .cli import add_config_arguments, config_overrides, describe_os_error, run_cli
from .config import PreprocessConfig, from_dict
from .datasets import Sample, read_dataset, reader_names
from .errors import DatasetError, ImageReadError, VesselsegError
from .fov import estimate_fov
from .io import read_image, read_mask, write_png, write_text_atomic
from .transforms import coverage_to_model, to_model_input

MANIFEST = "manifest.csv"
SETTINGS = "preprocess.json"


@dataclass
class PreprocessReport:
    out: Path
    counts: dict[str, int]
    skipped: list[tuple[str, str]]
    failed: list[tuple[str, str]]
    reused: int
    #: Suspicious but usable inputs, one message naming the file each (e.g. an empty annotation).
    notes: list[str] = field(default_factory=list)


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
                   notes: list[str] | None = None) -> list[dict]:
    """Write one sample (and its offline augmentations); return its manifest rows.

    `notes` collects warnings about usable but suspicious annotations (not binary, all zero).
    """
    image = read_image(sample.image)
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
        native_fov = out / "native_fov" / f"{sample.id}.png"
        if not native_fov.exists():
            write_png(native_fov, fov)
        fov_source = "estimated"
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
    for folder in (out, *(out / name for name in ("images", "vessels", "fov", "native_fov"))):
        if folder.is_dir():
            for stale in folder.glob(".*.part"):
                stale.unlink(missing_ok=True)


def _read_settings(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: unreadable ({exc}); pass --overwrite to redo the folder") \
            from None


def preprocess_dataset(dataset: str, source: str | Path | None, out: str | Path,
                       config: PreprocessConfig | None = None, overwrite: bool = False,
                       skip_missing: bool = False, workers: int = 2,
                       progress: bool = True,
                       on_sample_done: Callable[[int], None] | None = None) -> PreprocessReport:
    """Preprocess a dataset into `out`; the library function behind the CLI.

    `on_sample_done(rows_written)` is called after each finished sample (progress reporting,
    or a test killing the process at an exact point)."""
    config = config or PreprocessConfig()
    out = Path(out)
    settings = {"dataset": dataset, "source": str(Path(source).resolve()) if source else None,
                "config": asdict(config)}
    previous = out / SETTINGS
    old = None if overwrite else _read_settings(previous)
    if old is not None:
        if old != settings:
            raise DatasetError(f"{out} already holds data preprocessed with other settings "
                               f"({previous}); choose another --out or pass --overwrite")
    result = read_dataset(dataset, source)
    missing_is_error = dataset in ("folder", "drive", "chase", "stare") and not skip_missing
    if result.skipped and missing_is_error:
        names = "; ".join(f"{path} ({why})" for path, why in result.skipped)
        raise DatasetError(f"images without annotation: {names}. Add the annotations or pass "
                           f"--skip-missing")
    samples = assign_validation(result.samples, config.val_fraction, config.seed)
    if out.exists() and overwrite:  # only once the source is known to be readable
        for name in ("images", "vessels", "fov", "native_fov", MANIFEST, SETTINGS):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    if old is None:  # identical settings are not rewritten: a finished folder stays untouched
        try:
            write_text_atomic(previous, json.dumps(settings, indent=2) + "\n")
        except OSError:
            if created:  # leave no empty output folder behind (e.g. disk full)
                with contextlib.suppress(OSError):
                    out.rmdir()
            raise
    if (out / MANIFEST).exists():
        manifest = pd.read_csv(out / MANIFEST)
        return PreprocessReport(out, manifest["split"].value_counts().to_dict(),
                                [(str(p), why) for p, why in result.skipped], [], len(manifest))

    _remove_stale_parts(out)
    rows: list[dict] = []
    failed: list[tuple[str, str]] = []
    notes: list[str] = []

    def work(sample: Sample) -> list[dict]:
        return process_sample(sample, out, config, notes)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [(s, pool.submit(work, s)) for s in samples]
        for sample, future in tqdm(futures, desc=f"preprocess {dataset}", unit="img",
                                   disable=not progress):
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
    notes.sort()
    if failed:
        return PreprocessReport(out, {}, [(str(p), w) for p, w in result.skipped], failed, 0,
                                notes)
    manifest = pd.DataFrame(rows).sort_values(["split", "id"], kind="stable")
    write_text_atomic(out / MANIFEST, manifest.to_csv(index=False))
    return PreprocessReport(out, manifest["split"].value_counts().to_dict(),
                            [(str(p), w) for p, w in result.skipped], [], 0, notes)


def load_manifest(folder: str | Path) -> pd.DataFrame:
    """The manifest of a preprocessed folder, with paths made absolute."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.exists():
        raise DatasetError(f"{path}: no manifest; run `python -m vesselseg.preprocess` first")
    manifest = pd.read_csv(path, keep_default_na=False)
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
    return from_dict(PreprocessConfig, json.loads(path.read_text(encoding="utf-8"))["config"])


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
                                overwrite=args.overwrite, skip_missing=args.skip_missing)
    for path, why in report.skipped:
        print(f"skipped {path}: {why}")
    for note in report.notes:
        print(f"warning: {note}", file=sys.stderr)
    if report.failed:
        for _path, why in report.failed:
            print(f"error: {why}", file=sys.stderr)
        print(f"error: {len(report.failed)} file(s) failed; no manifest written. Fix or remove "
              f"them and re-run (finished samples are kept).", file=sys.stderr)
        return 1
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(report.counts.items()))
    if report.reused:  # nothing was written: do not claim so
        print(f"{report.out} is already complete ({report.reused} rows; {counts}); nothing to do "
              f"(pass --overwrite to redo it)")
        return 0
    print(f"wrote {report.out / MANIFEST} ({counts})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
