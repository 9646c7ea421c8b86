"""Agreement of vessel morphology (vesselseg.morphology) measured on the shipped model's masks
with the same measurements on the reference annotation, against the human bar.

For the test images of DRIVE (20; 2nd annotator available), CHASE_DB1 (the last 8; 2nd annotator
available) and HRF (the 27 annotated test images; one annotator), each measurement is taken on
the 1st annotation (the reference), on the shipped model's mask and on the 2nd annotation, inside
the FOV (official for DRIVE and HRF, estimated from the photo for CHASE_DB1, as `vesselseg test`
does). Model vs reference and 2nd annotator vs reference: ICC(2,1) (Shrout & Fleiss: two-way
random effects, absolute agreement, single measure), Pearson r, mean difference and Bland-Altman
95 % limits of agreement. A measurement reaches the human bar on a dataset when the model's
ICC(2,1) with the reference is at least the 2nd annotator's.

    python -m benchmarks.morphology --datasets ../shared/datasets

Writes into a new folder in artifacts/benchmarks/ (or --out): <dataset>_measurements.csv (one
row per image and rater), <dataset>_agreement.csv, bland_altman_<measurement>.png, an example
centreline figure per dataset, results.md (the table printed) and results.json.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from vesselseg.cli import run_cli
from vesselseg.errors import DatasetError
from vesselseg.io import atomic_path, write_text_atomic
from vesselseg.outputs import new_folder

from .pretrained import FOLDERS

#: The measurements compared (columns of vesselseg.morphology.COLUMNS). Within a dataset the
#: pixel versions are the size-free ones times the FOV diameter, which all raters share.
MEASURES = (
    "vessel_area_density", "length_density_px", "fd_mask", "fd_skeleton",
    "width_mean_px", "width_median_px", "segments", "branch_points", "end_points",
    "segment_length_mean_px", "tortuosity_dm", "tortuosity_density_px",
)
REFERENCE, MODEL, HUMAN = "annotation_1", "model", "annotation_2"
COMPARISONS = {MODEL: "model vs 1st annotation", HUMAN: "2nd vs 1st annotation"}


# -- statistics ------------------------------------------------------------------------------------
def icc_2_1(ratings: np.ndarray) -> float:
    """ICC(2,1) of an n subjects x k raters table (Shrout & Fleiss 1979, case 2, single rater):
    two-way random effects, absolute agreement, so that a constant bias between raters lowers
    it (unlike Pearson r).

        (MSR - MSE) / (MSR + (k - 1) MSE + k (MSC - MSE) / n)

    MSR, MSC, MSE: the mean squares of subjects (rows), raters (columns) and residual of the
    two-way ANOVA without replication. NaN with fewer than 2 complete subjects, or when the
    table has no variance at all."""
    table = np.asarray(ratings, np.float64)
    table = table[np.isfinite(table).all(axis=1)]
    n, k = table.shape if table.ndim == 2 else (0, 0)
    if n < 2 or k < 2:
        return math.nan
    grand = table.mean()
    rows, cols = table.mean(axis=1), table.mean(axis=0)
    msr = k * np.sum((rows - grand) ** 2) / (n - 1)
    msc = n * np.sum((cols - grand) ** 2) / (k - 1)
    mse = np.sum((table - rows[:, None] - cols[None, :] + grand) ** 2) / ((n - 1) * (k - 1))
    denominator = msr + (k - 1) * mse + k * (msc - mse) / n
    return float((msr - mse) / denominator) if denominator > 0 else math.nan


def pearson_r(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN when either side is constant (no warning)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    dx, dy = x - x.mean(), y - y.mean()
    scale = math.sqrt(float(np.sum(dx ** 2) * np.sum(dy ** 2)))
    return float(np.sum(dx * dy) / scale) if scale > 0 else math.nan


def agreement(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """ICC(2,1), Pearson r, mean difference (other - reference) and the Bland-Altman 95 % limits
    of agreement (mean difference +- 1.96 SD of the differences) over the images where both
    values are finite."""
    reference, other = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    both = np.isfinite(reference) & np.isfinite(other)
    reference, other = reference[both], other[both]
    n = int(both.sum())
    if n < 2:
        return {"n": n, "icc": math.nan, "r": math.nan, "mean_difference": math.nan,
                "loa_low": math.nan, "loa_high": math.nan}
    difference = other - reference
    bias, spread = float(difference.mean()), float(difference.std(ddof=1))
    return {"n": n, "icc": icc_2_1(np.stack([reference, other], axis=1)),
            "r": pearson_r(reference, other), "mean_difference": bias,
            "loa_low": bias - 1.96 * spread, "loa_high": bias + 1.96 * spread}


# -- measuring -------------------------------------------------------------------------------------
def test_samples(name: str, folder: Path) -> list:
    """The test split of a dataset, as the package's reader lists it."""
    from vesselseg.datasets import read_dataset

    samples = [s for s in read_dataset(name, folder).samples if s.split == "test"]
    if not samples:
        raise DatasetError(f"{folder}: dataset {name!r} has no test images")
    return samples


def measure_dataset(name: str, folder: Path, segmenter, out: Path,
                    progress: bool = True) -> pd.DataFrame:
    """One row per image and rater (reference, model, 2nd annotator when there is one)."""
    from tqdm import tqdm

    from vesselseg.fov import estimate_fov
    from vesselseg.io import read_image, read_mask
    from vesselseg.morphology import COLUMNS, measure, save_centreline_figure

    samples = test_samples(name, folder)
    loaded: dict[str, tuple] = {}

    def load(sample):
        image = read_image(sample.image)
        fov = (read_mask(sample.fov, image.shape[:2]) if sample.fov is not None
               else estimate_fov(image))
        loaded[sample.id] = (image, fov)
        return image, fov

    rows = []
    example = out / f"{samples[0].id}_model_width.png"
    stream = segmenter.predict_many(samples, load)
    for sample, prediction in tqdm(stream, total=len(samples), desc=name, unit="img",
                                   disable=not progress):
        if isinstance(prediction, Exception):
            raise prediction
        image, fov = loaded.pop(sample.id)
        masks = {REFERENCE: read_mask(sample.annotation, fov.shape), MODEL: prediction.mask}
        if sample.second_observer is not None:
            masks[HUMAN] = read_mask(sample.second_observer, fov.shape)
        for rater, mask in masks.items():
            rows.append({"dataset": name, "id": sample.id, "rater": rater,
                         **measure(mask, fov)})
        if sample is samples[0]:
            save_centreline_figure(example, image, prediction.mask, fov, "width",
                                   title=f"{sample.id}: model mask, centreline by width")
    return pd.DataFrame(rows, columns=["dataset", "id", "rater", *COLUMNS])


def agreement_table(measurements: pd.DataFrame) -> pd.DataFrame:
    """One row per measurement and comparison (model or 2nd annotator vs the reference)."""
    wide = measurements.pivot(index="id", columns="rater")
    rows = []
    for measure_name in MEASURES:
        reference = wide[(measure_name, REFERENCE)].to_numpy(np.float64)
        for rater, label in COMPARISONS.items():
            if (measure_name, rater) not in wide.columns:
                continue
            rows.append({"measurement": measure_name, "comparison": label, "rater": rater,
                         **agreement(reference, wide[(measure_name, rater)].to_numpy(np.float64))})
    return pd.DataFrame(rows)


# -- figures and the table -------------------------------------------------------------------------
def bland_altman_figure(measure_name: str, measurements: dict[str, pd.DataFrame],
                        agreements: dict[str, pd.DataFrame], path: Path) -> Path:
    """Bland-Altman plots of one measurement: a row per dataset, a column per comparison."""
    from matplotlib.figure import Figure

    datasets = list(measurements)
    figure = Figure(figsize=(10, 3.4 * len(datasets)))
    axes = figure.subplots(len(datasets), len(COMPARISONS), squeeze=False, sharex="row",
                           sharey="row")
    for i, name in enumerate(datasets):
        wide = measurements[name].pivot(index="id", columns="rater")[measure_name]
        for j, (rater, label) in enumerate(COMPARISONS.items()):
            axis = axes[i][j]
            if rater not in wide.columns:
                axis.text(0.5, 0.5, "no 2nd annotator", ha="center", va="center",
                          transform=axis.transAxes)
                axis.tick_params(labelleft=False, labelbottom=False, length=0)
                continue
            reference, other = wide[REFERENCE].to_numpy(float), wide[rater].to_numpy(float)
            both = np.isfinite(reference) & np.isfinite(other)
            mean, difference = (reference + other)[both] / 2, (other - reference)[both]
            stats = agreements[name].set_index(["measurement", "rater"]).loc[(measure_name,
                                                                               rater)]
            axis.scatter(mean, difference, s=14, color="tab:blue" if rater == MODEL
                         else "tab:orange")
            for value, style in ((stats["mean_difference"], "-"), (stats["loa_low"], "--"),
                                 (stats["loa_high"], "--")):
                if math.isfinite(value):
                    axis.axhline(value, color="gray", linestyle=style, linewidth=1)
            axis.axhline(0, color="black", linewidth=0.5)
            axis.set_title(f"{FOLDERS[name]}: {label}\nICC(2,1) {stats['icc']:.2f}, "
                           f"r {stats['r']:.2f}, n {stats['n']}", fontsize=9)
            axis.set_xlabel(f"mean of the two ({measure_name})", fontsize=8)
            axis.set_ylabel("difference (other - 1st annotation)", fontsize=8)
            axis.grid(alpha=0.3)
    figure.suptitle(f"Bland-Altman: {measure_name}; lines: mean difference and 95 % limits")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    return path


def _number(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def markdown_table(agreements: dict[str, pd.DataFrame]) -> str:
    lines = ["| test set | measurement | ICC model | ICC human | r model | r human | "
             "model - ref (95 % LoA) | human - ref (95 % LoA) | human bar |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, table in agreements.items():
        indexed = table.set_index(["measurement", "rater"])
        for measure_name in MEASURES:
            model = indexed.loc[(measure_name, MODEL)]
            human = (indexed.loc[(measure_name, HUMAN)] if (measure_name, HUMAN) in indexed.index
                     else None)

            def spread(row) -> str:
                if row is None:
                    return "n/a"
                return (f"{_number(row['mean_difference'])} ({_number(row['loa_low'])} to "
                        f"{_number(row['loa_high'])})")

            if human is None or not math.isfinite(human["icc"]):
                verdict = "n/a"
            else:
                verdict = "reached" if model["icc"] >= human["icc"] else "not reached"
            lines.append(f"| {FOLDERS[name]} ({model['n']}) | {measure_name} | "
                         f"{_number(model['icc'])} | "
                         f"{_number(human['icc']) if human is not None else 'n/a'} | "
                         f"{_number(model['r'])} | "
                         f"{_number(human['r']) if human is not None else 'n/a'} | "
                         f"{spread(model)} | {spread(human)} | {verdict} |")
    return "\n".join(lines) + "\n"


# -- the command -----------------------------------------------------------------------------------
def run_morphology_benchmark(datasets: Path, out: Path, names: list[str],
                             progress: bool = True) -> dict:
    from vesselseg.inference import Segmenter
    from vesselseg.morphology import warm_up

    folders = {name: datasets / FOLDERS[name] for name in names}
    for folder in folders.values():
        if not folder.is_dir():
            raise DatasetError(f"{folder}: dataset folder not found")
    warm_up()
    segmenter = Segmenter.pretrained()
    measurements, agreements, seconds = {}, {}, {}
    for name, folder in folders.items():
        start = time.perf_counter()
        measurements[name] = measure_dataset(name, folder, segmenter, out, progress)
        seconds[name] = round(time.perf_counter() - start, 1)
        agreements[name] = agreement_table(measurements[name])
        write_text_atomic(out / f"{name}_measurements.csv",
                          measurements[name].to_csv(index=False, float_format="%.6g"))
        write_text_atomic(out / f"{name}_agreement.csv",
                          agreements[name].to_csv(index=False, float_format="%.6g"))
    for measure_name in MEASURES:
        bland_altman_figure(measure_name, measurements, agreements,
                            out / f"bland_altman_{measure_name}.png")
    table = markdown_table(agreements)
    results = {
        "model": "shipped pretrained model", "threshold": segmenter.threshold,
        "compute_precision": segmenter.compute_precision, "seconds": seconds,
        "images": {name: int(m["id"].nunique()) for name, m in measurements.items()},
        "agreement": {name: a.to_dict(orient="records") for name, a in agreements.items()},
    }
    write_text_atomic(out / "results.md", table)
    write_text_atomic(out / "results.json", json.dumps(results, indent=2, default=float) + "\n")
    return {"table": table, "results": results}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.morphology", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=Path, default=Path("../shared/datasets"),
                        help="folder holding DRIVE/, CHASEDB1/ and HRF/ (default %(default)s)")
    parser.add_argument("--only", nargs="+", choices=list(FOLDERS), default=list(FOLDERS),
                        help="measure these test sets only (default: all three)")
    parser.add_argument("--out", type=Path,
                        help="output folder (default: new folder in artifacts/benchmarks)")
    return parser


def _main(args: argparse.Namespace) -> int:
    out = args.out or new_folder("artifacts/benchmarks", "morphology")
    out.mkdir(parents=True, exist_ok=True)
    report = run_morphology_benchmark(args.datasets, out, args.only, progress=not args.quiet)
    print(report["table"])
    print(f"results: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
