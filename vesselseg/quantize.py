"""int8 ONNX exports: ONNX Runtime static quantisation, kept only where it keeps accuracy.

Calibration feeds photos prepared exactly as the Segmenter prepares them (FOV crop, enhancement,
working size; the windows of the model's input size when the working size is larger), taken from
the run's own training images (its preprocessed folders' manifests) or from photos the user
names; never test images. The quantised model is then measured against the float32 export on
annotated images (the run's validation images by default, or a dataset the user names): the
pooled F1 at the run's threshold, native resolution, inside the FOV (the `test` protocol). The
export is published only when that F1 moves by at most INT8_F1_BAR; otherwise it fails and says
the measured change. Weights are int8 per channel, activations uint8 (ONNX Runtime's u8s8 kernels
on x86), in QDQ form.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import ConfigError, DatasetError

#: The largest change of pooled F1 from float32 an int8 export may show (issue #34's bar).
INT8_F1_BAR = 0.003
#: Photos used to calibrate (spread evenly over the ones given): enough for stable ranges.
CALIBRATION_PHOTOS = 24


def _spread(items: list, count: int) -> list:
    if len(items) <= count:
        return items
    picks = np.linspace(0, len(items) - 1, count).round().astype(int)
    return [items[i] for i in picks]


def _run_data_folders(run) -> list[Path]:
    data = run.config().data
    return [Path(folder) for folder in (data if isinstance(data, list) else data.split(","))]


def _manifest_images(run, split: str) -> list:
    from .preprocess import load_manifest

    found = []
    for folder in _run_data_folders(run):
        if not (folder / "manifest.csv").exists():
            continue
        manifest = load_manifest(folder)
        rows = manifest[(manifest["split"] == split) & (manifest["augment_of"] == "")]
        found.extend(rows.to_dict("records"))
    return found


def calibration_photos(run, sources: str | Path | list | None = None,
                       count: int = CALIBRATION_PHOTOS) -> list[Path]:
    """The photos to calibrate on: each source is a folder of photos or DATASET=FOLDER (that
    dataset's training split); default the run's own training images. A clear error when there
    are none."""
    from .io import is_image_file
    from .test import items_from_dataset

    if sources is None:
        rows = _manifest_images(run, "train")
        photos = [Path(row["native_image"]) for row in rows if Path(row["native_image"]).exists()]
        if not photos:
            folders = ", ".join(map(str, _run_data_folders(run)))
            raise DatasetError(f"int8 calibration: the run's training images (its data: "
                               f"{folders}) are not on this machine; pass --calibration with a "
                               f"folder of training photos or DATASET=FOLDER (e.g. "
                               f"drive=../DRIVE), never test images")
        return _spread(photos, count)
    photos: list[Path] = []
    for source in [sources] if isinstance(sources, (str, Path)) else sources:
        name, _, folder = str(source).partition("=")
        if folder:
            photos.extend(item.image for item in items_from_dataset(name, folder, "train"))
            continue
        folder = Path(source)
        if not folder.is_dir():
            raise DatasetError(f"int8 calibration: {folder}: no such folder")
        found = sorted(p for p in folder.iterdir() if is_image_file(p)
                       and not p.name.startswith("."))
        if not found:
            raise DatasetError(f"int8 calibration: {folder}: no photos in this folder")
        photos.extend(found)
    return _spread(photos, count)


def check_items(run, check: str | None = None) -> tuple[list, str]:
    """(annotated TestItems, their name) that decide whether an int8 export is published:
    DATASET=FOLDER (its test split), else the run's validation images."""
    from .test import TestItem, items_from_dataset

    if check:
        name, _, folder = check.partition("=")
        if not folder:
            raise ConfigError(f"check: {check!r} must be DATASET=FOLDER, e.g. drive=../DRIVE")
        return items_from_dataset(name, folder, "test"), f"{name} test images"
    rows = [row for row in _manifest_images(run, "val")
            if Path(row["native_image"]).exists() and Path(row["native_annotation"]).exists()]
    if not rows:
        raise DatasetError("int8 check: the run's validation images are not on this machine; "
                           "pass --check DATASET=FOLDER (annotated images, e.g. drive=../DRIVE) "
                           "to measure the int8 export's F1 change")
    items = [TestItem(row["id"], Path(row["native_image"]), Path(row["native_annotation"]),
                      Path(row["native_fov"]) if row["native_fov"] else None, row["fov_source"])
             for row in rows]
    return items, "the run's validation images"


def prepared_windows(segmenter, photos: list[Path]) -> Iterator[np.ndarray]:
    """Model inputs [1, S, S, 3] of each photo, prepared as the Segmenter prepares them (its
    windows when the working size exceeds the model's input)."""
    from .io import read_image
    from .tiling import tile_starts

    window = segmenter.window
    step = max(1, window - segmenter.tile_overlap)
    for photo in photos:
        image, _, _ = segmenter.prepare(read_image(photo))
        side = image.shape[0]
        for y in tile_starts(side, window, step):
            for x in tile_starts(side, window, step):
                yield np.ascontiguousarray(image[None, y:y + window, x:x + window])


def pooled_scores(segmenter, items: list) -> dict[str, float]:
    """Pooled figures (F1, AUC-ROC...) of `segmenter` on annotated items: the `test` protocol
    (native resolution, inside the FOV, pixel counts summed over the images)."""
    from .evaluation import PooledEvaluator
    from .test import _load

    evaluator = PooledEvaluator(threshold=segmenter.threshold)
    for item in items:
        image, (truth, fov) = _load(item)
        evaluator.add(item.id, segmenter.predict(image, fov).probability, truth, fov)
    return evaluator.pooled()


def quantize_onnx(source: Path, target: Path, inputs: Iterator[np.ndarray]) -> None:
    """Static int8 quantisation of the ONNX model `source` into `target`, calibrated (min/max)
    on `inputs`."""
    import tempfile

    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .backends import OnnxRunner

    name = OnnxRunner(source).input_name

    class Reader(CalibrationDataReader):
        def get_next(self):
            batch = next(inputs, None)
            return None if batch is None else {name: batch}

    with tempfile.TemporaryDirectory(prefix="vesselseg-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(target), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
    # (min/max calibration keeps only each tensor's min and max per photo: no memory to cap;
    # ORT 1.32's CalibMaxIntermediateOutputs would even drop the collected ranges)


def quantize_export(float_export: Path, target: Path, photos: list[Path], items: list,
                    check_name: str, bar: float = INT8_F1_BAR) -> dict:
    """Quantise the (self-describing) float32 ONNX export into `target`, then measure both on
    `items`; raises ExportVerificationError when the pooled F1 moves by more than `bar`.
    Returns the figures, which the int8 export records."""
    from .errors import ExportVerificationError
    from .runtime import load

    floating = load(float_export, fmt="onnx")
    quantize_onnx(float_export, target, prepared_windows(floating, photos))
    before = pooled_scores(floating, items)
    after = pooled_scores(load_unlabelled(target, floating), items)
    change = after["f1"] - before["f1"]
    figures = {"check": check_name, "images": len(items), "calibration_photos": len(photos),
               "threshold": floating.threshold, "f1_float32": before["f1"],
               "f1_int8": after["f1"], "f1_change": change, "auc_roc_float32": before["auc_roc"],
               "auc_roc_int8": after["auc_roc"], "bar": bar,
               "how": "ONNX Runtime quantize_static: QDQ, per-channel int8 weights, uint8 "
                      "activations, min/max calibration on prepared training photos"}
    if not abs(change) <= bar:
        raise ExportVerificationError(
            f"int8 export refused: pooled F1 on {check_name} ({len(items)} images) "
            f"{after['f1']:.4f} against float32 {before['f1']:.4f}, a change of {change:+.4f} "
            f"beyond the allowed {bar:g}; use the float32 export")
    return figures


def load_unlabelled(path: Path, like):
    """A Segmenter over the ONNX model at `path` (not yet carrying its record) with the
    settings of the Segmenter `like`."""
    from .backends import OnnxRunner
    from .inference import Segmenter

    segmenter = Segmenter(None, like.preprocess, threshold=like.threshold,
                          working_size=like.working_size, tile_overlap=like.tile_overlap,
                          runner=OnnxRunner(path), backend="onnx", depth=like.depth)
    segmenter.runner.precision = "int8"
    return segmenter
