"""`vesselseg export --run RUN --format savedmodel|tflite|onnx`: export a trained model.

(Over 350 lines on purpose: conversion, verification against Keras and atomic publication of the
three formats share their checks and belong in one place; the runners are in `backends`.)

The U-Net has open spatial dimensions; an export fixes them to the size the run works at
(`working_size` in its config.json when the Keras model runs it whole, else the training size
`preprocess.size`), so every artifact takes a float32 batch [N, size, size, 3] of RGB values in
[0, 1] (N is dynamic in all three formats) and gives vessel probabilities [N, size, size, 1].
The Segmenter feeds exactly such batches (it tiles larger working sizes), so an export can
replace the Keras model: `Segmenter.from_run(run, backend="onnx")`.

- savedmodel: Keras 3 `model.export(..., format="tf_saved_model")`; endpoint `serve`.
- tflite: TFLiteConverter from that SavedModel, float32, no quantisation.
- onnx: tf2onnx from the Keras model (opset 17 by default), run with ONNX Runtime.

Default location: RUN/export/{savedmodel/, model.tflite, model.onnx} (for the shipped model, a
folder of the user cache: nothing is written into the installed package). An existing export is
never replaced without `overwrite`; the artifact is written under a temporary name beside its
target, verified, and only then renamed into place. Verification runs the exported artifact with its
own runtime on a random batch and on a synthetic fundus photo prepared like a real one, and compares
the probabilities with the Keras model's: the export fails unless the max abs diff is < 1e-3.

Every artifact describes itself (`metadata`: preprocessing, working size, tiling, thresholds,
model name and version, the SHA-256 of the best.keras it came from, the measured diffs), so the
file alone reproduces eval at any path (`runtime.load`, `vesselseg eval --model FILE`). No
sidecar file is written. `--precision int8` quantises an ONNX export (`quantize`) and publishes it
only when its F1 stays within the bar.

ONNX needs the `export` extra (tf2onnx, onnx, onnxruntime): pip install "vesselseg[export]". TFLite
conversion needs only TensorFlow; the TFLite runner uses LiteRT (ai-edge-litert, in that extra)
when installed, else TensorFlow's own deprecated tf.lite.Interpreter.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import metadata
from .backends import (
    EXPORT_INSTALL_HINT,
    RUNNERS,
    KerasRunner,
    inference_model,
    need_module,
)
from .cli import run_cli
from .errors import (  # defined beside the other errors: quantize raises them too
    ExportError,
    ExportExistsError,
    ExportVerificationError,
    ModelFileError,
)
from .runs import RunFolder

FORMATS = tuple(RunFolder.EXPORT_NAMES)
#: What an export computes in: float32 (every format), or int8 (ONNX static quantisation).
PRECISIONS = ("float32", "int8")
DEFAULT_OPSET = 17
TOLERANCE = 1e-3
INSTALL_HINT = EXPORT_INSTALL_HINT


@dataclass
class ExportResult:
    path: Path
    format: str
    size: int  # the fixed input height and width
    diffs: dict[str, float] = field(default_factory=dict)  # max abs diff per verification input
    seconds: float = 0.0
    precision: str = "float32"
    int8: dict | None = None  # the int8 accuracy check (quantize.quantize_export)

    @property
    def max_abs_diff(self) -> float:
        return max(self.diffs.values()) if self.diffs else float("nan")


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ExportError(f"format: unknown {fmt!r}; valid formats: {', '.join(FORMATS)}")
    return fmt


def default_export_path(run: str | Path | RunFolder, fmt: str, precision: str = "float32"
                        ) -> Path:
    """Where an export of `run` in format `fmt` goes unless told otherwise (`RunFolder`; an int8
    ONNX export is model.int8.onnx beside model.onnx)."""
    path = RunFolder.named(run).export_path(check_format(fmt))
    return path.with_name("model.int8.onnx") if precision == "int8" else path


def _need(module: str, what: str):
    try:
        return need_module(module, what)
    except ModelFileError as exc:
        raise ExportError(str(exc)) from None


# -- conversion --------------------------------------------------------------------------------
def _write_saved_model(model, size: int, folder: Path) -> None:
    import keras

    model.export(str(folder), format="tf_saved_model", verbose=False,
                 input_signature=[keras.InputSpec(shape=(None, size, size, 3), dtype="float32")])


def _convert_tflite(model, size: int, target: Path) -> None:
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="vesselseg-savedmodel-") as tmp:
        _write_saved_model(model, size, Path(tmp) / "savedmodel")
        converter = tf.lite.TFLiteConverter.from_saved_model(str(Path(tmp) / "savedmodel"))
        target.write_bytes(converter.convert())


def _embed(tmp: Path, fmt: str, facts: dict) -> None:
    """Write the export's record (`metadata`) into the finished artifact at `tmp`."""
    if fmt == "onnx":
        metadata.embed_onnx(tmp, facts)
    elif fmt == "tflite":
        tmp.write_bytes(metadata.embed_tflite(tmp.read_bytes(), facts))
    else:
        metadata.embed_savedmodel(tmp, facts)


def _convert_onnx(model, size: int, target: Path, opset: int) -> None:
    tf = _need("tensorflow", "ONNX export")
    tf2onnx = _need("tf2onnx", "ONNX export")
    _need("onnx", "ONNX export")
    spec = (tf.TensorSpec((None, size, size, 3), tf.float32, name="image"),)
    with _quiet_tf2onnx():
        tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset,
                                   output_path=str(target))


@contextlib.contextmanager
def _quiet_tf2onnx() -> Iterator[None]:
    import logging

    logger = logging.getLogger("tf2onnx")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


# -- atomic publication ------------------------------------------------------------------------
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once: os.umask is process-wide and not thread-safe


def _publish(tmp: Path, target: Path, overwrite: bool) -> None:
    """Rename a finished temporary file or folder onto `target`; no clobbering unless asked."""
    os.chmod(tmp, (0o777 if tmp.is_dir() else 0o666) & ~_UMASK)
    if tmp.is_dir():
        old = None
        if target.exists() and overwrite:
            old = target.with_name(f".{target.name}.old-{os.getpid()}-{time.monotonic_ns()}")
            os.rename(target, old)
        try:
            os.rename(tmp, target)  # fails on an existing non-empty folder: no clobbering
        except OSError:
            if old is not None:
                os.rename(old, target)
            if target.exists():
                raise ExportExistsError(_exists_message(target)) from None
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    elif overwrite:
        os.replace(tmp, target)
    else:
        try:
            os.link(tmp, target)  # atomic and fails if the target appeared meanwhile
        except FileExistsError:
            raise ExportExistsError(_exists_message(target)) from None
        except OSError:  # a file system without hard links
            if target.exists():
                raise ExportExistsError(_exists_message(target)) from None
            os.replace(tmp, target)
        else:
            tmp.unlink()


def _exists_message(target: Path) -> str:
    return f"{target} already exists; pass --overwrite to replace it, or choose another --out"


def _check_target(target: Path, fmt: str, overwrite: bool) -> None:
    if target.exists() and not overwrite:
        raise ExportExistsError(_exists_message(target))
    if fmt == "savedmodel" and target.exists() and not target.is_dir():
        raise ExportError(f"{target}: is a file; a SavedModel export is a folder")
    if fmt != "savedmodel" and target.is_dir():
        raise ExportError(f"{target}: is a folder; a {fmt} export is one file")


# -- verification ------------------------------------------------------------------------------
def verification_inputs(size: int, preprocess=None, seed: int = 0) -> dict[str, np.ndarray]:
    """A random batch and a synthetic fundus photo prepared like a real one, both float32."""
    from .datasets import generate_fundus
    from .fov import estimate_fov
    from .transforms import to_model_input

    rng = np.random.default_rng(seed)
    inputs = {"random batch": rng.random((2, size, size, 3), dtype=np.float32)}
    photo = generate_fundus(seed, max(size, 256)).image
    if preprocess is None:
        from .config import PreprocessConfig

        preprocess = PreprocessConfig(size=size)
    prepared, _, _ = to_model_input(photo, estimate_fov(photo), preprocess, size)
    inputs["synthetic fundus"] = (prepared.astype(np.float32) / 255.0)[None]
    return inputs


def compare_with_keras(model, runner, inputs: dict[str, np.ndarray]) -> dict[str, float]:
    """Max abs probability difference between Keras and `runner` per input batch."""
    reference = KerasRunner(model)
    diffs = {}
    for name, batch in inputs.items():
        expected, got = reference(batch), runner(batch)
        if got.shape != expected.shape:
            raise ExportVerificationError(f"{name}: exported model output shape "
                                          f"{list(got.shape)} != Keras {list(expected.shape)}")
        diffs[name] = float(np.max(np.abs(got.astype(np.float64) - expected)))
    return diffs


def _format_diffs(diffs: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.2e}" for name, value in diffs.items())


# -- the library function ----------------------------------------------------------------------
def export_run(run: str | Path, fmt: str, out: str | Path | None = None, overwrite: bool = False,
               opset: int = DEFAULT_OPSET, tolerance: float = TOLERANCE,
               precision: str = "float32", calibration: str | Path | list | None = None,
               check: str | None = None, max_f1_change: float | None = None) -> ExportResult:
    """Export, verify against Keras, embed the record (`metadata`), then publish atomically;
    the result carries the diffs.

    precision "int8" (onnx only): the verified float32 ONNX model is quantised statically
    (`quantize`), calibrated on `calibration` photos (default: the run's training images), and
    published only if its pooled F1 on the `check` images (default: the run's validation
    images) moves by at most `max_f1_change` (quantize.INT8_F1_BAR) from float32's."""
    from .inference import export_size

    check_format(fmt)
    if precision not in PRECISIONS:
        raise ExportError(f"precision: unknown {precision!r}; valid: {', '.join(PRECISIONS)}")
    if precision == "int8" and fmt != "onnx":
        raise ExportError(f"precision: int8 exports are ONNX only (ONNX Runtime static "
                          f"quantisation), not {fmt}")
    start = time.monotonic()
    run = RunFolder.existing(run)
    model_path, config = run.model_path, run.config()
    size = export_size(config)
    target = Path(out) if out is not None else default_export_path(run, fmt, precision)
    _check_target(target, fmt, overwrite)
    suffix = {"onnx": ".onnx", "tflite": ".tflite"}.get(fmt)
    if suffix and target.suffix.lower() != suffix:
        raise ExportError(f"{target}: name a {fmt} export *{suffix} (readers tell the format "
                          f"by it)")
    if fmt == "onnx":
        for module in ("tf2onnx", "onnx", "onnxruntime"):
            _need(module, "ONNX export")
    if precision == "int8":
        from . import quantize

        # before the slow conversion: say now when the calibration or check images are missing
        photos = quantize.calibration_photos(run, calibration)
        items, check_name = quantize.check_items(run, check)
    # float32 whatever the run trained in: converters and ONNX Runtime take no bfloat16 graphs
    model = inference_model(model_path, config, precision="float32")
    tmp = _temporary(target, fmt)
    extra_tmp: list[Path] = []
    int8 = None
    try:
        try:
            if fmt == "savedmodel":
                _write_saved_model(model, size, tmp)
            elif fmt == "tflite":
                _convert_tflite(model, size, tmp)
            else:
                _convert_onnx(model, size, tmp, opset)
        except ExportError:
            raise
        except OSError as exc:
            raise ExportError(f"{target}: cannot write the export ({exc})") from None
        except Exception as exc:  # noqa: BLE001 - converters raise anything
            raise ExportError(f"{fmt} conversion of {model_path} failed: "
                              f"{type(exc).__name__}: {exc}") from exc
        inputs = verification_inputs(size, config.preprocess)
        diffs = compare_with_keras(model, RUNNERS[fmt](tmp), inputs)
        worst = max(diffs.values())
        if not worst < tolerance:  # also catches NaN
            raise ExportVerificationError(
                f"{fmt} export of {model_path} is not faithful: max abs probability diff "
                f"{worst:.3g} >= {tolerance:g} ({_format_diffs(diffs)}); nothing was written")
        extra = {"verification": {"max_abs_diff_vs_keras": diffs, "tolerance": tolerance},
                 "versions": _versions(fmt)}
        if fmt == "onnx":
            extra["opset"] = opset
        facts = metadata.describe_run(run, fmt, size, extra=extra)
        _embed(tmp, fmt, facts)
        if precision == "int8":
            quantised = _temporary(target, fmt)
            extra_tmp.append(quantised)
            bar = quantize.INT8_F1_BAR if max_f1_change is None else max_f1_change
            figures = quantize.quantize_export(tmp, quantised, photos, items, check_name, bar)
            facts = metadata.describe_run(run, fmt, size, precision="int8",
                                          extra={**extra, "int8": figures})
            _embed(quantised, fmt, facts)
            extra_tmp.append(tmp)
            tmp = quantised
            int8 = figures
        _check_embedded(tmp, fmt, facts)
        _publish(tmp, target, overwrite)
    finally:
        for path in [tmp, *extra_tmp]:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists():
                path.unlink()
    return ExportResult(target, fmt, size, diffs, time.monotonic() - start, precision, int8)


def _temporary(target: Path, fmt: str) -> Path:
    """A fresh temporary file (folder for SavedModel) beside `target`, renamed into place only
    when finished and verified."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "savedmodel":
            return Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".part",
                                         dir=target.parent))
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        os.close(fd)
        return Path(name)
    except OSError as exc:
        raise ExportError(f"{target}: cannot write the export ({exc})") from None


def _check_embedded(tmp: Path, fmt: str, facts: dict) -> None:
    """The record reads back from the finished artifact, unchanged (through the reader the
    runtime uses, without TensorFlow)."""
    read = metadata.read_metadata(tmp, fmt)
    if read != json.loads(metadata.to_json(facts)):
        raise ExportVerificationError(f"{fmt} export: the embedded vesselseg metadata does not "
                                      f"read back as written; nothing was written")


def export_model(run: str | Path, fmt: str, out: str | Path | None = None,
                 overwrite: bool = False, **kwargs) -> Path:
    """Export the best model of `run` as `fmt` (savedmodel | tflite | onnx); returns its path.

    Default location RUN/export/...; raises ExportExistsError rather than replace an existing
    export unless `overwrite`, and ExportVerificationError when the exported model's
    probabilities differ from Keras by 1e-3 or more. `export_run` also returns the diffs.
    """
    return export_run(run, fmt, out, overwrite=overwrite, **kwargs).path


def _versions(fmt: str) -> dict[str, str]:
    from importlib import metadata

    names = ["tensorflow", "keras"] + {"onnx": ["tf2onnx", "onnx", "onnxruntime"],
                                       "tflite": ["ai-edge-litert"]}.get(fmt, [])
    versions = {}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


# -- command line ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vesselseg export",
        description="Export the best model of a training run as a TensorFlow SavedModel, a "
                    "TFLite flatbuffer or an ONNX model, with a fixed input of the run's "
                    "working size (else its training size; [N, size, size, 3] float32, dynamic "
                    "N), verify it against the Keras model (max abs probability diff < 1e-3), "
                    "and embed what reproduces eval (preprocessing, working size, tiling, "
                    "thresholds, model name and version; see vesselseg inspect FILE). The file "
                    "alone is then enough: vesselseg eval --model FILE, or "
                    "vesselseg.runtime.load(FILE) without TensorFlow. ONNX needs "
                    f"{INSTALL_HINT}.")
    parser.add_argument("--run", required=True, metavar="RUN",
                        help="run folder from vesselseg train, or 'pretrained' (the shipped "
                             "model)")
    parser.add_argument("--format", required=True, choices=FORMATS, dest="fmt",
                        help="savedmodel (a folder), tflite or onnx (one file)")
    parser.add_argument("--out", help="output path, from any directory (default: "
                                      "RUN/export/savedmodel, RUN/export/model.tflite or "
                                      "RUN/export/model.onnx (model.int8.onnx for int8); for "
                                      "'pretrained' a folder in ~/.cache/vesselseg, never the "
                                      "installed package, where --backend finds it)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32",
                        help="float32 (default), or int8: ONNX Runtime static quantisation "
                             "(onnx only), published only if its pooled F1 on the --check "
                             "images moves by at most --max-f1-change from float32's")
    parser.add_argument("--calibration", metavar="FOLDER", action="append",
                        help="int8: a folder of photos, or DATASET=FOLDER (its training "
                             "split), to calibrate the quantisation on; repeatable (default: "
                             "the run's training images, when they are on this machine; never "
                             "test images)")
    parser.add_argument("--check", metavar="DATASET=FOLDER",
                        help="int8: the annotated images that measure its F1 change, as a "
                             "dataset reader and its folder, e.g. drive=../DRIVE (its test "
                             "split; nothing is tuned on it, it only decides whether to publish; "
                             "default: the run's validation images, when they are on this "
                             "machine)")
    parser.add_argument("--max-f1-change", type=float, metavar="F",
                        help="int8: the largest pooled F1 change from float32 that still "
                             "publishes (default 0.003)")
    parser.add_argument("--json", action="store_true",
                        help="print the export's path, format, size and check as JSON")
    return parser


def _main(args: argparse.Namespace) -> int:
    result = export_run(args.run, args.fmt, args.out, overwrite=args.overwrite, opset=args.opset,
                        precision=args.precision, calibration=args.calibration,
                        check=args.check, max_f1_change=args.max_f1_change)
    if args.json:
        print(json.dumps({"path": str(result.path), "format": result.format,
                          "precision": result.precision, "size": result.size,
                          "max_abs_diff": result.max_abs_diff, "int8": result.int8,
                          "seconds": result.seconds}))
        return 0
    print(f"exported {result.format} ({result.precision}): {result.path}")
    print(f"input [N, {result.size}, {result.size}, 3] float32 -> vessel probability "
          f"[N, {result.size}, {result.size}, 1]; the file describes itself: vesselseg inspect "
          f"{result.path}")
    print(f"verified against Keras: max abs diff {result.max_abs_diff:.3g} "
          f"({_format_diffs(result.diffs)}; tolerance {TOLERANCE:g}) in {result.seconds:.1f} s")
    if result.int8:
        figures = result.int8
        print(f"int8 on {figures['check']} ({figures['images']} images): pooled F1 "
              f"{figures['f1_int8']:.4f} against float32 {figures['f1_float32']:.4f} (change "
              f"{figures['f1_change']:+.4f}, allowed {figures['bar']:g})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
