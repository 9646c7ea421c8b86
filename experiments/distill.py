"""`python -m experiments.distill`: a copy of a preprocessed folder whose training targets mix the
annotation with a teacher model's probability map, for training with `soft_labels`.

Averaging several views (flip TTA, multi-scale) ranks pixels better than one pass but costs up to
12 passes at every use. Distillation trains a model on that average, so one pass may keep part of
the gain. Only the training rows get the teacher's map; validation and test rows keep their
annotation, so the threshold and every figure still come from the annotations alone.

    python -m experiments.distill --data data/drive --out data/drive_distilled --tta --scales multi
    python -m vesselseg.train --data data/drive_distilled --soft-labels --init-from pretrained
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vesselseg.cli import run_cli
from vesselseg.errors import ConfigError, DatasetError
from vesselseg.io import read_image, read_levels, read_mask, write_png, write_text_atomic
from vesselseg.preprocess import MANIFEST, SETTINGS, load_manifest, load_preprocess_config
from vesselseg.transforms import Geometry, crop, resize

RECORD = "distill.json"


@dataclass
class DistillReport:
    out: Path
    distilled: int  # training rows whose targets now mix in the teacher
    copied: int  # other rows, unchanged


def teacher_target(probability: np.ndarray, coverage: np.ndarray, model_fov: np.ndarray,
                   box: Geometry, mix: float) -> np.ndarray:
    """uint8 target: `mix` x the teacher's native map brought to model size (area resampling,
    as the annotation) + (1 - `mix`) x the annotation's coverage, zero outside the FOV."""
    size = coverage.shape[0]
    teacher = np.clip(resize(crop(probability.astype(np.float32), box), size, size), 0.0, 1.0)
    target = mix * teacher + (1.0 - mix) * coverage.astype(np.float32) / 255.0
    return (np.rint(target * 255.0).astype(np.uint8) * model_fov).astype(np.uint8)


def _box(row) -> Geometry:
    return Geometry(int(row.native_height), int(row.native_width), int(row.crop_x0),
                    int(row.crop_y0), int(row.crop_x1), int(row.crop_y1))


def _copy(source: str | Path, target: Path) -> None:
    """Hard link when the file system allows it (the copies are identical), else copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def distill_folder(data: str | Path, out: str | Path, segmenter, mix: float = 0.5,
                   progress: bool = True) -> DistillReport:
    """Write `out`: `data` with the training targets replaced by `teacher_target` of
    `segmenter`'s prediction on each native photo. `out` must not exist yet."""
    data, out = Path(data), Path(out)
    if not 0.0 < mix <= 1.0:
        raise ConfigError(f"mix: {mix} must be in (0, 1] (the teacher's share of the target)")
    if out.exists():
        raise DatasetError(f"{out} already exists; distil into a new folder")
    manifest = load_manifest(data)
    augmented = manifest["augment_of"].fillna("").astype(str).str.len() > 0
    if augmented.any():
        raise DatasetError(f"{data} holds offline augmented copies (preprocess --augment); the "
                           f"teacher sees native photos only, so preprocess without --augment")
    staging = out.with_name(out.name + ".part")
    if staging.exists():
        shutil.rmtree(staging)
    rows = list(manifest.itertuples())
    distilled = 0
    try:
        for row in tqdm(rows, desc="distil", unit="img", disable=not progress):
            _copy(row.image, staging / Path(row.image).relative_to(data))
            _copy(row.fov, staging / Path(row.fov).relative_to(data))
            vessels = staging / Path(row.vessels).relative_to(data)
            if row.split != "train":
                _copy(row.vessels, vessels)
                continue
            image = read_image(row.native_image)
            fov = read_mask(row.native_fov, image.shape[:2])
            probability = segmenter.predict(image, fov).probability
            target = teacher_target(probability, read_levels(row.vessels),
                                    read_levels(row.fov) >= 128, _box(row), mix)
            write_png(vessels, target)
            distilled += 1
        shutil.copyfile(data / SETTINGS, staging / SETTINGS)
        shutil.copyfile(data / MANIFEST, staging / MANIFEST)  # paths are relative: unchanged
        record = {"source": str(data.resolve()), "teacher": segmenter.source,
                  "tta": segmenter.tta, "scales": list(segmenter.scales), "mix": mix,
                  "distilled_rows": distilled,
                  "how": "training targets = mix x teacher probability (model size, area "
                         "resampled) + (1 - mix) x annotation coverage; other splits unchanged"}
        write_text_atomic(staging / RECORD, json.dumps(record, indent=2) + "\n")
        load_preprocess_config(staging)  # the copy reads back as a preprocessed folder
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return DistillReport(out, distilled, len(rows) - distilled)


def build_parser() -> argparse.ArgumentParser:
    from vesselseg.cli import add_scales_argument

    parser = argparse.ArgumentParser(
        prog="python -m experiments.distill",
        description="Copy a preprocessed folder, replacing its training targets by a mix of the "
                    "annotation and a teacher model's (averaged) probability map; train on the "
                    "copy with --soft-labels.")
    parser.add_argument("--data", required=True, help="preprocessed folder (vesselseg.preprocess)")
    parser.add_argument("--out", required=True, help="new folder to write (must not exist)")
    parser.add_argument("--run", help="teacher run folder (default: the shipped model)")
    parser.add_argument("--tta", action="store_true", help="teacher averages flipped predictions")
    add_scales_argument(parser, prefix="teacher: ")
    parser.add_argument("--mix", type=float, default=0.5,
                        help="the teacher's share of each training target, in (0, 1] (default "
                             "0.5: half teacher, half annotation)")
    return parser


def _main(args: argparse.Namespace) -> int:
    from vesselseg.inference import Segmenter

    # the threshold plays no part: only probabilities are used
    settings = {"tta": args.tta, "scales": args.scales, "threshold": 0.5}
    segmenter = (Segmenter.from_run(args.run, **settings) if args.run
                 else Segmenter.pretrained(**settings))
    report = distill_folder(args.data, args.out, segmenter, args.mix)
    print(f"wrote {report.out}: {report.distilled} training targets distilled, "
          f"{report.copied} other rows copied")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
