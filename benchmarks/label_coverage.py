"""How much of each dataset's annotation survives the shrink to the model's 512x512 input.

For every training photo of DRIVE, CHASE_DB1 and HRF, the annotation is resampled to the model
size the way `preprocess` does it, then mapped back to native size the way predictions are. Per
reference vessel width (the classes of `test`'s calibre.csv), two figures over the native vessel
pixels:

- binary kept: the share still labelled vessel by the binary mask (coverage >= half a pixel),
  what training sees by default;
- soft target: the mean target value with `soft_labels` (the coverage itself).

    python -m benchmarks.label_coverage --datasets ../shared/datasets
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from vesselseg.config import PreprocessConfig
from vesselseg.evaluation import CALIBRES, vessel_calibre

from .pretrained import FOLDERS


def label_coverage(annotation: np.ndarray, fov: np.ndarray, size: int = 512
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vessel pixels, binary-kept pixels, summed soft target) per calibre class, over the
    native vessel pixels inside the FOV of one annotation."""
    from vesselseg.transforms import coverage_to_model, model_fov, to_native

    fov_small, box = model_fov(fov, PreprocessConfig(), size)
    coverage = coverage_to_model(annotation & fov, box, size) * fov_small
    binary_back = to_native((coverage >= 128).astype(np.float32), box) >= 0.5
    soft_back = to_native(coverage.astype(np.float32) / 255.0, box)
    classes = vessel_calibre(annotation)
    counts, kept, soft = (np.zeros(len(CALIBRES)) for _ in range(3))
    for index in range(len(CALIBRES)):
        chosen = (classes == index + 1) & fov
        counts[index] = chosen.sum()
        kept[index] = (binary_back & chosen).sum()
        soft[index] = soft_back[chosen].sum()
    return counts, kept, soft


def dataset_table(name: str, source: Path, progress: bool = True) -> list[dict]:
    """One row per calibre class for the training photos of dataset `name`."""
    from vesselseg.datasets import read_dataset
    from vesselseg.fov import estimate_fov
    from vesselseg.io import read_image, read_mask

    samples = [s for s in read_dataset(name, source).samples if s.split != "test"]
    totals = np.zeros((3, len(CALIBRES)))
    for sample in tqdm(samples, desc=name, unit="img", disable=not progress):
        image = read_image(sample.image)
        annotation = read_mask(sample.annotation, image.shape[:2])
        fov = (read_mask(sample.fov, image.shape[:2]) if sample.fov is not None
               else estimate_fov(image))
        totals += np.stack(label_coverage(annotation, fov))
    counts, kept, soft = totals
    return [{"dataset": name, "images": len(samples), "calibre": calibre,
             "vessel_pixels": int(counts[i]), "binary_kept": kept[i] / max(counts[i], 1),
             "soft_target": soft[i] / max(counts[i], 1)} for i, calibre in enumerate(CALIBRES)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.label_coverage",
        description="How much of the training annotations of DRIVE, CHASE_DB1 and HRF survives "
                    "the shrink to 512x512, by vessel width: binary masks against soft "
                    "(coverage) labels.")
    parser.add_argument("--datasets", type=Path, default=Path("../shared/datasets"),
                        help="folder holding DRIVE/, CHASEDB1/ and HRF/ (default %(default)s); "
                             "missing ones are skipped")
    parser.add_argument("--out", type=Path, help="also write the table to this CSV file")
    return parser


def main(argv: list[str] | None = None) -> int:
    from vesselseg.io import write_text_atomic

    args = build_parser().parse_args(argv)
    rows = []
    for name, folder in FOLDERS.items():
        if (args.datasets / folder).is_dir():
            rows += dataset_table(name, args.datasets / folder)
    if not rows:
        print(f"error: {args.datasets} holds none of {', '.join(FOLDERS.values())}",
              file=sys.stderr)
        return 2
    table = pd.DataFrame(rows)
    print("native vessel pixels of the training photos, by reference vessel width, after the "
          "shrink to 512x512 and back (inside the FOV):")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.out:
        write_text_atomic(args.out, table.to_csv(index=False, float_format="%.4f"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
