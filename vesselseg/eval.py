"""`vesselseg eval IMAGE_OR_FOLDER ...`: segment photos, no annotation needed.

For each photo: <name>_probability.png, <name>_mask.png and <name>_overlay.png (at the photo's
native size), and its vessel density printed. Any size; JPEG, PNG, TIFF, GIF, PPM, BMP; grayscale,
RGBA and 16-bit are converted. A broken file is reported and skipped; the exit status is non-zero
when any file failed.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .cli import (
    add_inference_arguments,
    add_run_argument,
    describe_os_error,
    run_cli,
    segmenter_from_args,
)
from .errors import DatasetError, VesselsegError
from .inference import Prediction, Segmenter
from .io import is_image_file, read_image, write_png, write_text_atomic
from .outputs import new_folder, write_probability
from .plots import overlay

OUTPUT_KINDS = ("probability", "mask", "overlay")


@dataclass
class EvalResult:
    path: Path
    outputs: dict[str, Path]
    vessel_density: float | None
    error: str | None = None


def collect_images(inputs: list[str | Path]) -> list[Path]:
    """Files given directly, plus the image files inside given folders (sorted, not recursive)."""
    found: list[Path] = []
    for entry in map(Path, inputs):
        if entry.is_dir():
            images = sorted(p for p in entry.iterdir() if p.is_file() and is_image_file(p))
            if not images:
                raise DatasetError(f"{entry}: folder contains no image files")
            found.extend(images)
        elif entry.exists():
            found.append(entry)
        else:
            raise DatasetError(f"{entry}: no such file or folder")
    if not found:
        raise DatasetError("no input images given")
    return found


def output_names(images: list[Path], out: Path) -> dict[Path, dict[str, Path]]:
    """Output paths per photo; photos sharing a stem get a numeric suffix instead of clashing."""
    used: set[str] = set()
    names: dict[Path, dict[str, Path]] = {}
    for image in images:
        stem = image.name[:-3] if image.name.lower().endswith(".gz") else image.name
        stem = Path(stem).stem
        candidate, counter = stem, 1
        while candidate in used:
            counter += 1
            candidate = f"{stem}-{counter}"
        used.add(candidate)
        names[image] = {kind: out / f"{candidate}_{kind}.png" for kind in OUTPUT_KINDS}
    return names


def _write(outputs: dict[str, Path], image, prediction: Prediction) -> None:
    try:
        write_probability(outputs["probability"], prediction.probability)
        write_png(outputs["mask"], prediction.mask)
        write_png(outputs["overlay"], overlay(image, prediction.mask))
    except BaseException:
        for path in outputs.values():  # all three outputs of a photo, or none of them
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        raise


def segment_images(segmenter: Segmenter, images: list[Path], out: str | Path,
                   overwrite: bool = False, progress: bool = True) -> list[EvalResult]:
    """Segment every photo into `out`; failures are returned per photo, never raised."""
    out = Path(out)
    names = output_names(images, out)
    if not overwrite:
        existing = [p for paths in names.values() for p in paths.values() if p.exists()]
        if existing:
            raise VesselsegError(f"{existing[0]} already exists ({len(existing)} output files "
                                 f"would be replaced); pass --overwrite or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    photos: dict[Path, object] = {}

    def load(path: Path):
        image = read_image(path)
        photos[path] = image
        return image, None

    results: list[EvalResult] = []
    with ThreadPoolExecutor(max_workers=1) as writer:
        jobs = []
        for path, prediction in tqdm(segmenter.predict_many(images, load), total=len(images),
                                     desc="eval", unit="img", disable=not progress):
            if isinstance(prediction, Exception):
                results.append(EvalResult(path, {}, None, str(prediction)))
                continue
            image = photos.pop(path)
            jobs.append((len(results), writer.submit(_write, names[path], image, prediction)))
            results.append(EvalResult(path, names[path], prediction.vessel_density))
        for index, job in jobs:
            try:
                job.result()
            except OSError as exc:
                results[index] = EvalResult(results[index].path, {}, None,
                                            f"{results[index].path}: cannot write outputs "
                                            f"({describe_os_error(exc)})")
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vesselseg eval",
        description="Segment the vessels of fundus photos (files or folders). Writes a "
                    "probability map, a binary mask and an overlay per photo, at native size.")
    parser.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    add_run_argument(parser)
    parser.add_argument("--out", help="output folder (default: a new folder in artifacts/eval/; "
                                      "an earlier result there is never replaced without "
                                      "--overwrite)")
    add_inference_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return parser


def _main(args: argparse.Namespace) -> int:
    images = collect_images(args.inputs)
    segmenter = segmenter_from_args(args)
    out_existed = bool(args.out) and Path(args.out).exists()
    out = Path(args.out) if args.out else new_folder("artifacts/eval", "eval")
    summary = out / "summary.json"
    if summary.exists() and not args.overwrite:
        raise VesselsegError(f"{summary} already exists (an earlier eval); pass --overwrite or "
                             f"choose another --out")
    results = segment_images(segmenter, images, out, overwrite=args.overwrite,
                             progress=not args.json)
    failures = [r for r in results if r.error]
    if args.json:
        print(json.dumps([{"image": str(r.path), "vessel_density": r.vessel_density,
                           "outputs": {k: str(v) for k, v in r.outputs.items()},
                           "error": r.error} for r in results], indent=2))
    else:
        for r in results:
            if not r.error:
                print(f"{r.path}: vessel density {100 * r.vessel_density:.2f} % of the FOV -> "
                      f"{r.outputs['overlay']}")
    for r in failures:
        print(f"error: {r.error}", file=sys.stderr)
    try:
        write_text_atomic(summary, json.dumps(
            {"model": segmenter.source, "backend": segmenter.backend,
             "threshold": segmenter.threshold,
             "threshold_source": segmenter.threshold_source, "tta": segmenter.tta,
             "scales": list(segmenter.scales),
             "compute_precision": segmenter.compute_precision,
             "working_size": segmenter.working_size,
             "results": [{"image": str(r.path), "vessel_density": r.vessel_density,
                          "error": r.error} for r in results]}, indent=2) + "\n")
    except OSError:
        if not out_existed:  # nothing could be written: leave no empty output folder behind
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    if failures:
        print(f"error: {len(failures)} of {len(results)} image(s) failed", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
