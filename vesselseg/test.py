"""`vesselseg test`: honest per-image metrics of a trained model on annotated images.

Protocol: probabilities are mapped back to each image's native resolution and compared with the
reference annotation only inside the FOV; the pooled row sums pixel counts over all images.
Outputs go into a new folder (inside the run, or in artifacts/tests/ for the shipped model, unless
--out is given): metrics.csv, calibre.csv (figures by vessel width), morphology.csv (the vessel
measurements of prediction and annotation side by side), summary.json, roc_pr.png, and per image
a probability PNG, a binary mask PNG and a comparison panel. The pooled metrics and a few panels
also go to the run's TensorBoard log (RUN/tensorboard/test; with --out, OUT/tensorboard).

Over 350 lines: the test protocol with its outputs (metrics, morphology, TensorBoard) and the
command.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .cli import add_inference_arguments, add_run_argument, run_cli, segmenter_from_args
from .datasets import read_dataset, reader_names
from .errors import DatasetError, NothingProcessed, VesselsegError
from .evaluation import METRIC_NAMES, PooledEvaluator, summary_rows
from .fov import estimate_fov
from .inference import Segmenter
from .io import is_plain_name, read_image, read_mask, write_png, write_text_atomic
from .locks import LOCK_NAME
from .outputs import new_folder, replace_folder, write_probability
from .plots import comparison_panel, roc_pr_curves
from .runs import PRETRAINED_NAME, RunFolder

PROTOCOL = ("native resolution; pixels inside the FOV only; pooled row = metrics of the summed "
            "pixel counts over all images; mean/std rows over per-image figures")


@dataclass(frozen=True)
class TestItem:
    """An annotated image at native resolution."""

    id: str
    image: Path
    annotation: Path
    fov: Path | None  # None: estimated from the image
    fov_source: str


def items_from_manifest(folder: str | Path, split: str = "test") -> list[TestItem]:
    from .preprocess import load_manifest

    manifest = load_manifest(folder)
    rows = manifest[(manifest["split"] == split) & (manifest["augment_of"] == "")]
    if rows.empty:
        raise DatasetError(f"{folder}: no {split!r} images in the manifest")
    for item_id in rows["id"]:  # ids name output files: they must stay inside --out
        if not is_plain_name(item_id):
            raise DatasetError(f"{Path(folder) / 'manifest.csv'}: id {item_id!r} is not a plain "
                               f"file name (outputs are named after ids)")
    return [TestItem(r["id"], Path(r["native_image"]), Path(r["native_annotation"]),
                     Path(r["native_fov"]) if r["native_fov"] else None, r["fov_source"])
            for _, r in rows.iterrows()]


def items_from_dataset(dataset: str, source: str | Path, split: str = "test") -> list[TestItem]:
    result = read_dataset(dataset, source)
    chosen = [s for s in result.samples if s.split == split]
    if not chosen:
        raise DatasetError(f"{source}: dataset {dataset!r} has no {split!r} images")
    return [TestItem(s.id, s.image, s.annotation, s.fov, "official" if s.fov else "estimated")
            for s in chosen]


@dataclass
class TestReport:
    out: Path
    table: pd.DataFrame
    pooled: dict
    failures: list[tuple[str, str]]
    #: Usable but suspicious annotations (not binary, no vessel pixel), one message per file.
    notes: list[str] = field(default_factory=list)
    #: The best-F1 threshold on these very images (each weighing the same) and that F1: for
    #: choosing a threshold on validation images; on test images it would be cheating.
    fitted_threshold: tuple[float, float] | None = None
    #: Pooled figures by reference vessel width (`PooledEvaluator.calibre`).
    calibre: list[dict] = field(default_factory=list)


def _load(item: TestItem, notes: list[str] | None = None):
    image = read_image(item.image)
    truth = read_mask(item.annotation, image.shape[:2], notes=notes)
    fov = read_mask(item.fov, image.shape[:2]) if item.fov else estimate_fov(image)
    return image, (truth, fov)


def run_test(segmenter: Segmenter, items: list[TestItem], out: str | Path,
             save_images: bool = True, progress: bool = True,
             description: dict | None = None, morphology: bool = True,
             tensorboard: str | Path | None = None, step: int = 0) -> TestReport:
    """Evaluate `segmenter` on `items`; write the result files into the (new) folder `out`.

    morphology: also write morphology.csv, each vessel measurement of the prediction beside
    that of the annotation. tensorboard: a log folder that receives the pooled metrics and a
    few prediction panels (at `step`, e.g. the run's epochs)."""
    from .console import progress as progress_of

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    evaluator = PooledEvaluator(threshold=segmenter.threshold)
    failures: list[tuple[str, str]] = []
    notes: list[str] = []
    truths: dict[str, tuple] = {}
    measured: list[dict] = []
    panels: list = []

    def load(item: TestItem):
        image, extra = _load(item, notes)
        truths[item.id] = (image, *extra)
        return image, extra[1]

    with ThreadPoolExecutor(max_workers=1) as writer:
        jobs = []
        stream = segmenter.predict_many(items, load)
        for item, result in progress_of(stream, total=len(items), desc="test",
                                        quiet=not progress):
            if isinstance(result, Exception):
                failures.append((str(item.image), str(result)))
                continue
            image, truth, fov = truths.pop(item.id)
            evaluator.add(item.id, result.probability, truth, fov)
            if morphology:
                measured.append(writer.submit(morphology_rows, item.id, result, truth, fov))
            if tensorboard is not None and len(panels) < TENSORBOARD_PANELS:
                panels.append(small_panel(image, truth, result.mask, fov))
            if save_images:
                jobs.append(writer.submit(_write_item_outputs, out, item.id, image, truth, fov,
                                          result))
        for job in jobs:
            job.result()
    if not evaluator.rows:
        raise NothingProcessed("no image could be evaluated: "
                               + "; ".join(m for _, m in failures))
    pooled = evaluator.pooled()
    fitted = evaluator.per_image_threshold()
    table = pd.DataFrame(summary_rows(evaluator.rows, pooled),
                         columns=["id", *METRIC_NAMES, "threshold"])
    write_text_atomic(out / "metrics.csv", table.to_csv(index=False, float_format="%.6f"))
    calibre = evaluator.calibre()
    write_text_atomic(out / "calibre.csv",
                      pd.DataFrame(calibre).to_csv(index=False, float_format="%.6f"))
    roc_pr_curves(evaluator.curves(), pooled["auc_roc"], pooled["auc_pr"], out / "roc_pr.png")
    summary = {
        "protocol": PROTOCOL,
        "threshold": segmenter.threshold,
        "threshold_source": segmenter.threshold_source,
        "tta": segmenter.tta,
        "scales": list(segmenter.scales),
        "compute_precision": segmenter.compute_precision,
        "working_size": segmenter.working_size,
        "model": segmenter.source,
        "images": len(evaluator.rows),
        "fov": sorted({i.fov_source for i in items}),
        "pooled": pooled,
        "fitted_threshold": {"threshold": fitted[0], "f1": fitted[1], "how": FITTED_HOW},
        "calibre": {"how": CALIBRE_HOW, "rows": calibre},
        "mean": table[table["id"] == "mean"].iloc[0][list(METRIC_NAMES)].to_dict(),
        "std": table[table["id"] == "std"].iloc[0][list(METRIC_NAMES)].to_dict(),
        "failures": failures,
        "warnings": sorted(notes),
        **(description or {}),
    }
    if morphology:
        rows = [row for job in measured for row in job.result()]
        write_text_atomic(out / "morphology.csv",
                          pd.DataFrame(rows).to_csv(index=False, float_format="%.6g"))
    write_text_atomic(out / "summary.json", json.dumps(_clean(summary), indent=2) + "\n")
    if tensorboard is not None:
        log_to_tensorboard(tensorboard, pooled, panels, step,
                           (description or {}).get("data", "test"))
    return TestReport(out, table, pooled, failures, sorted(notes), fitted, calibre)


def morphology_rows(item_id: str, prediction, truth, fov) -> list[dict]:
    """morphology.csv rows of one image: each measurement from the predicted mask beside the
    same from the annotation (both inside the same FOV), and their difference."""
    from .morphology import measure

    model, human = measure(prediction.mask, fov), measure(truth & fov, fov)
    rows = [{"id": item_id, "measurement": name, "prediction": value,
             "annotation": human[name], "difference": value - human[name]}
            for name, value in model.items() if name != "reason" and not name.endswith("_um")]
    for source, record in (("prediction", model), ("annotation", human)):
        if record["reason"]:
            rows.append({"id": item_id, "measurement": f"reason ({source})",
                         "prediction": None, "annotation": None, "difference": None,
                         "note": record["reason"]})
    return rows


#: Prediction panels logged to TensorBoard per test (image | errors: TP white, FP red, FN blue).
TENSORBOARD_PANELS = 3
PANEL_WIDTH = 384


def small_panel(image, truth, mask, fov):
    """The photo beside its error map, PANEL_WIDTH pixels wide each (for TensorBoard)."""
    import cv2

    from .plots import error_overlay

    errors = error_overlay(mask, truth, fov)
    height = max(1, round(image.shape[0] * PANEL_WIDTH / image.shape[1]))
    small = [cv2.resize(x, (PANEL_WIDTH, height), interpolation=cv2.INTER_AREA)
             for x in (image, errors)]
    return np.concatenate(small, axis=1)


def log_to_tensorboard(logdir: str | Path, pooled: dict, panels: list, step: int,
                       label: str) -> Path:
    """Pooled test metrics as scalars test/<metric> and the panels as images, in `logdir`
    (`tensorboard --logdir RUN/tensorboard` shows them beside the training curves)."""
    import tensorflow as tf

    logdir = Path(logdir)
    writer = tf.summary.create_file_writer(str(logdir))
    with writer.as_default():
        for name in METRIC_NAMES:
            value = pooled.get(name)
            if value is not None and math.isfinite(value):
                tf.summary.scalar(f"test/{name}", value, step=step, description=label)
        if panels:
            height = min(panel.shape[0] for panel in panels)
            tf.summary.image("test/panels (image | TP white, FP red, FN blue)",
                             np.stack([panel[:height] for panel in panels]), step=step,
                             max_outputs=len(panels), description=label)
    writer.flush()
    writer.close()
    return logdir


CALIBRE_HOW = ("reference vessel pixels by the width of their vessel in native pixels, pooled "
               "inside the FOV; auc_roc ranks them against all background pixels, auc_roc_loss = "
               "share x (1 - auc_roc) sums to 1 - the pooled AUC-ROC")
FITTED_HOW = ("best-F1 threshold on these images, each image weighing the same: a threshold for "
              "the model only if these are validation images, never test images")


def _clean(value):
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return _clean(value.item())
    return value


def _write_item_outputs(out: Path, item_id: str, image, truth, fov, prediction) -> None:
    write_probability(out / "probabilities" / f"{item_id}.png", prediction.probability)
    write_png(out / "masks" / f"{item_id}.png", prediction.mask)
    comparison_panel(image, truth & fov, prediction.probability, prediction.mask, fov,
                     f"{item_id} (threshold {prediction.threshold:.3f})",
                     out / "panels" / f"{item_id}.png")


def format_table(table: pd.DataFrame) -> str:
    columns = ["id", "accuracy", "sensitivity", "specificity", "precision", "f1", "iou", "mcc",
               "auc_roc", "auc_pr", "cldice"]
    return table[columns].to_string(index=False, float_format=lambda v: f"{v:.4f}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vesselseg test",
        description="Per-image and pooled metrics of a trained model on annotated images, at "
                    "native resolution inside the FOV (" + PROTOCOL + ").")
    add_run_argument(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="preprocessed folder (uses its manifest)")
    source.add_argument("--dataset", choices=reader_names(), help="raw dataset reader")
    parser.add_argument("--source", help="raw dataset folder (with --dataset)")
    parser.add_argument("--split", default="test", help="split to evaluate (default test)")
    add_inference_arguments(parser)
    parser.add_argument("--out", help="output folder (default: a new folder in RUN/tests/, or in "
                                      "artifacts/tests/ for the shipped model)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the earlier test result in --out (only once the new one "
                             "is complete)")
    parser.add_argument("--no-images", action="store_true",
                        help="skip per-image PNGs and panels (metrics only)")
    parser.add_argument("--no-morphology", action="store_true",
                        help="skip morphology.csv (the vessel measurements of prediction and "
                             "annotation side by side)")
    parser.add_argument("--json", action="store_true",
                        help="print the metrics (pooled, mean, std and per image) as JSON")
    return parser


def _main(args: argparse.Namespace) -> int:
    if args.data:
        items = items_from_manifest(args.data, args.split)
        data_label = str(args.data)
    else:
        items = items_from_dataset(args.dataset, args.source, args.split)
        data_label = f"{args.dataset}:{args.source}"
    segmenter = segmenter_from_args(args)
    run = RunFolder.named(args.run or PRETRAINED_NAME)
    existed = bool(args.out) and Path(args.out).exists()
    with contextlib.ExitStack() as held:
        if args.out:  # one test per --out at a time, never among its inputs
            from .locks import hold_folder
            from .outputs import refuse_overlap

            inputs = [Path(args.data or args.source), *input_folders(items)]
            refuse_overlap(args.out, inputs, "input folder")
            held.enter_context(hold_folder(args.out, command="test"))
        return _test_into(args, items, data_label, segmenter, run, existed)


def input_folders(items: list[TestItem]) -> list[Path]:
    """The folders holding the photos, annotations and FOV masks of `items` (an --out there
    would mix results with the data, and --overwrite could replace it)."""
    files = [path for item in items for path in (item.image, item.annotation, item.fov) if path]
    return sorted({path.parent for path in files})


#: What a test result folder holds (summary.json, the tables, the curves, the per-image PNGs
#: and TensorBoard logs): --overwrite replaces a folder holding nothing else.
TEST_FILES = {"summary.json", "metrics.csv", "calibre.csv", "morphology.csv", "roc_pr.png"}
TEST_IMAGE_FOLDERS = {"probabilities", "masks", "panels"}


def check_earlier_result(out: Path) -> None:
    """Raise unless `out` holds an earlier test result and nothing else (--overwrite deletes
    the whole folder once the new result is complete): a folder with other files (an eval's
    results, notes, the data itself) is refused, naming one of them."""
    summary = out / "summary.json"
    try:
        record = json.loads(summary.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        record = None
    if not isinstance(record, dict) or record.get("protocol") != PROTOCOL:
        raise VesselsegError(f"{out}: holds no earlier test result (a test's summary.json), so "
                             f"--overwrite will not replace it; choose a new --out")
    for path in sorted(out.iterdir()):
        if path.name in TEST_FILES and path.is_file() or path.name == LOCK_NAME:
            continue
        if path.name == "tensorboard" and path.is_dir():
            continue
        if path.name in TEST_IMAGE_FOLDERS and path.is_dir():
            other = next((inner for inner in sorted(path.iterdir())
                          if not (inner.is_file() and inner.suffix == ".png")), None)
            if other is None:
                continue
            path = other
        raise VesselsegError(f"{out}: holds {path.name!r}, which vesselseg test did not write; "
                             f"--overwrite replaces only a folder holding a test result alone: "
                             f"move that file, or choose a new --out")


def _test_into(args: argparse.Namespace, items: list[TestItem], data_label: str,
               segmenter: Segmenter, run: RunFolder, existed: bool = False) -> int:
    """The test into --out (or a new folder), `existed`: whether --out was there before."""
    final, created = None, True
    if args.out:
        out = Path(args.out)
        created = not existed
        if out.exists() and any(p.name != LOCK_NAME for p in out.iterdir()):
            if not args.overwrite:
                raise VesselsegError(f"{out}: output folder is not empty; pass --overwrite to "
                                     f"replace an earlier test result, or choose a new --out")
            check_earlier_result(out)
            final, out, created = out, new_folder(out.parent, f".{out.name}.new"), True
    else:
        name = f"pretrained_{args.split}" if run.is_shipped else args.split
        out = run.output_folder(RunFolder.TESTS, name, "artifacts/tests")
    # a result inside the run logs to the run's TensorBoard; one given its own --out (and the
    # shipped model, part of the package) keeps its logs with it and leaves the run untouched
    inside_run = not args.out and not run.is_shipped
    logdir = run.path / "tensorboard" / "test" if inside_run else out / "tensorboard"
    try:
        report = run_test(segmenter, items, out, save_images=not args.no_images,
                          progress=not (args.quiet or args.json),
                          description={"data": data_label, "split": args.split,
                                       "run": str(run), "backend": segmenter.backend},
                          morphology=not args.no_morphology, tensorboard=logdir,
                          step=_epochs(run.status()))
        if final is not None:  # the new result is complete: now it replaces the earlier one
            replace_folder(final, out)
            report.out = out = final
    except BaseException:
        if created:  # no image evaluated, disk full, Ctrl-C...: leave no partial result folder
            shutil.rmtree(out, ignore_errors=True)
        raise
    for note in report.notes:
        print(f"warning: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps({"pooled": _clean(report.pooled), "out": str(report.out),
                          "rows": _clean(report.table.to_dict(orient="records"))}, indent=2))
        return _report_failures(report)
    print(format_table(report.table))
    sizes = "+".join(str(size) for size in segmenter.scale_sizes)
    print(f"\n{PROTOCOL}; threshold {segmenter.threshold:.3f} ({segmenter.threshold_source})"
          + (", flip TTA" if args.tta else "") + f"; computed in {segmenter.compute_precision}"
          + f"; FOV crop at {sizes} px square" + (" (averaged)" if "+" in sizes else ""))
    threshold, f1 = report.fitted_threshold
    print(f"fitted on these images: threshold {threshold:.3f} (F1 {f1:.4f}, each image weighing "
          f"the same); pass it as --threshold only if these are validation images")
    widths = [f"{row['calibre']}: {row['share']:.0%} of vessel pixels, Se "
              f"{row['sensitivity']:.3f}, AUC-ROC {row['auc_roc']:.4f}"
              for row in report.calibre if row["vessel_pixels"]]
    if widths:
        print("by reference vessel width: " + "; ".join(widths))
    print(f"results: {report.out}")
    return _report_failures(report)


def _epochs(status: dict) -> int:
    """The run's trained epochs from status.json, as the TensorBoard step (0 when the record is
    not a plausible count: a hand-edited or damaged status.json must not stop a test)."""
    epochs = status.get("epochs", 0)
    if isinstance(epochs, bool) or not isinstance(epochs, (int, float)):
        return 0
    return int(epochs) if 0 <= epochs < 2**31 else 0


def _report_failures(report: TestReport) -> int:
    for _, message in report.failures:
        print(f"error: {message}", file=sys.stderr)
    if report.failures:
        print(f"error: {len(report.failures)} image(s) failed", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    from .cli import exit_now_if_model_call_abandoned

    sys.exit(exit_now_if_model_call_abandoned(main()))
