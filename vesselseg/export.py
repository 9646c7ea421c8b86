"""`python -m vesselseg.export --run RUN --format savedmodel|tflite|onnx`: export a trained model.

The U-Net has open spatial dimensions; an export fixes them to the size the run works at
(`working_size` in its config.json when the Keras model runs it whole, else the training size
`preprocess.size`), so every artifact takes a float32 batch [N, size, size, 3] of RGB values in
[0, 1] (N is dynamic in all three formats) and gives vessel probabilities [N, size, size, 1].
The Segmenter feeds exactly such batches (it tiles larger working sizes), so an export can
replace the Keras model: `Segmenter.from_run(run, backend="onnx")`.

- savedmodel: Keras 3 `model.export(..., format="tf_saved_model")`; endpoint `serve`.
- tflite: TFLiteConverter from that SavedModel, float32, no quantisation.
- onnx: tf2onnx from the Keras model (opset 17 by default), run with ONNX Runtime.

Default location: RUN/export/{savedmodel/, model.tflite, model.onnx}. An existing export is never
replaced without `overwrite`; the artifact is written under a temporary name beside its target,
verified, and only then renamed into place. Verification runs the exported artifact with its own
runtime on a random batch and on a synthetic fundus photo prepared like a real one, and compares
the probabilities with the Keras model's: the export fails unless the max abs diff is < 1e-3.
A small JSON sidecar beside the artifact (e.g. model.onnx.json) records the input shape, the
SHA-256 of the best.keras it came from (so a stale export is detected) and the measured diffs.

ONNX needs the `export` extra (tf2onnx, onnx, onnxruntime): pip install "vesselseg[export]". TFLite
conversion needs only TensorFlow; the TFLite runner uses LiteRT (ai-edge-litert, in that extra)
when installed, else TensorFlow's own deprecated tf.lite.Interpreter.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .cli import run_cli
from .errors import ModelLoadError, VesselsegError

FORMATS = ("savedmodel", "tflite", "onnx")
EXPORT_DIR = "export"
DEFAULT_NAMES = {"savedmodel": "savedmodel", "tflite": "model.tflite", "onnx": "model.onnx"}
DEFAULT_OPSET = 17
TOLERANCE = 1e-3
INSTALL_HINT = 'pip install "vesselseg[export]"'

Runner = Callable[[np.ndarray], np.ndarray]  # float32 [N, S, S, 3] -> probabilities [N, S, S]


class ExportError(VesselsegError):
    """A model could not be exported, loaded from an export, or the export is not faithful."""


class ExportExistsError(ExportError):
    """The target of an export already exists and overwriting was not asked for."""


class ExportVerificationError(ExportError):
    """The exported model's probabilities differ too much from the Keras model's."""


@dataclass
class ExportResult:
    path: Path
    format: str
    size: int  # the fixed input height and width
    diffs: dict[str, float] = field(default_factory=dict)  # max abs diff per verification input
    seconds: float = 0.0

    @property
    def max_abs_diff(self) -> float:
        return max(self.diffs.values()) if self.diffs else float("nan")


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ExportError(f"format: unknown {fmt!r}; valid formats: {', '.join(FORMATS)}")
    return fmt


def default_export_path(run: str | Path, fmt: str) -> Path:
    """Where an export of `run` in format `fmt` goes unless told otherwise."""
    return Path(run) / EXPORT_DIR / DEFAULT_NAMES[check_format(fmt)]


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- runtimes --------------------------------------------------------------------------------
def _need(module: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ExportError(f"{what} needs the Python package {module.split('.')[0]!r} "
                          f"({exc}); install it with: {INSTALL_HINT}") from None


def _check_batch(batch: np.ndarray, size: int, what: str) -> np.ndarray:
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    if batch.ndim != 4 or batch.shape[1:] != (size, size, 3):
        raise ExportError(f"the {what} model takes [N, {size}, {size}, 3] inputs (the run's "
                          f"working size is fixed at export); got {list(batch.shape)}")
    return batch


def keras_runner(model) -> Runner:
    def run(batch: np.ndarray) -> np.ndarray:
        return np.asarray(model(batch, training=False), dtype=np.float32)[..., 0]

    return run


class OnnxRunner:
    """ONNX Runtime session over an exported model.onnx."""

    def __init__(self, path: str | Path):
        ort = _need("onnxruntime", "the onnx backend")
        path = Path(path)
        try:
            self.session = ort.InferenceSession(str(path), providers=ort.get_available_providers())
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise ExportError(f"{path}: not a loadable ONNX model ({exc})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.size = int(self.session.get_inputs()[0].shape[1])
        self.path = path

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = _check_batch(batch, self.size, "ONNX")
        out = self.session.run(None, {self.input_name: batch})[0]
        return np.asarray(out, dtype=np.float32)[..., 0]


def _tflite_interpreter_class():
    """LiteRT's interpreter when installed (the maintained one), else TensorFlow's own."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        import warnings

        import tensorflow as tf

        def make(**kwargs):
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
                return tf.lite.Interpreter(**kwargs)

        return make


class TFLiteRunner:
    """TFLite interpreter over an exported model.tflite (resized to each batch size)."""

    def __init__(self, path: str | Path):
        path = Path(path)
        interpreter = _tflite_interpreter_class()
        try:
            self.interpreter = interpreter(model_path=str(path), num_threads=os.cpu_count() or 1)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ExportError(f"{path}: not a loadable TFLite model ({exc})") from None
        detail = self.interpreter.get_input_details()[0]
        self.input_index = detail["index"]
        self.output_index = self.interpreter.get_output_details()[0]["index"]
        self.size = int(detail["shape_signature"][1])
        self.batch = int(detail["shape"][0])
        self.lock = threading.Lock()  # an interpreter must not be used by two threads at once
        self.path = path

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = _check_batch(batch, self.size, "TFLite")
        if len(batch) == 0:
            return np.zeros((0, self.size, self.size), np.float32)
        with self.lock:
            if len(batch) != self.batch:
                self.interpreter.resize_tensor_input(self.input_index, list(batch.shape))
                self.interpreter.allocate_tensors()
                self.batch = len(batch)
            self.interpreter.set_tensor(self.input_index, batch)
            self.interpreter.invoke()
            out = self.interpreter.get_tensor(self.output_index)
        return np.array(out, dtype=np.float32)[..., 0]


class SavedModelRunner:
    """The `serve` endpoint of an exported TensorFlow SavedModel."""

    def __init__(self, path: str | Path):
        import tensorflow as tf

        path = Path(path)
        try:
            self.loaded = tf.saved_model.load(str(path))  # keep a reference: it owns the weights
        except Exception as exc:  # noqa: BLE001 - TF raises many error types for a bad folder
            raise ExportError(f"{path}: not a loadable SavedModel ({exc})") from None
        self.serve = self.loaded.signatures["serving_default"]
        spec = list(self.serve.structured_input_signature[1].values())[0]
        self.input_name = list(self.serve.structured_input_signature[1])[0]
        self.size = int(spec.shape[1])
        self.path = path

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = _check_batch(batch, self.size, "SavedModel")
        out = list(self.serve(**{self.input_name: batch}).values())[0]
        return np.asarray(out, dtype=np.float32)[..., 0]


RUNNERS: dict[str, Callable[[Path], Runner]] = {
    "savedmodel": SavedModelRunner, "tflite": TFLiteRunner, "onnx": OnnxRunner}


def load_runner(fmt: str, path: str | Path) -> Runner:
    """A callable float32 [N, S, S, 3] -> probabilities [N, S, S] over an exported artifact."""
    path = Path(path)
    if not path.exists():
        raise ExportError(f"{path}: no such {check_format(fmt)} export")
    return RUNNERS[check_format(fmt)](path)


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


def compare_with_keras(model, runner: Runner, inputs: dict[str, np.ndarray]) -> dict[str, float]:
    """Max abs probability difference between Keras and `runner` per input batch."""
    reference = keras_runner(model)
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
               opset: int = DEFAULT_OPSET, tolerance: float = TOLERANCE) -> ExportResult:
    """Export, verify against Keras, then publish atomically; the result carries the diffs."""
    from .inference import export_size, inference_model, run_files

    check_format(fmt)
    start = time.monotonic()
    run, model_path, config = run_files(run)
    size = export_size(config)
    target = Path(out) if out is not None else default_export_path(run, fmt)
    _check_target(target, fmt, overwrite)
    if fmt == "onnx":
        for module in ("tf2onnx", "onnx", "onnxruntime"):
            _need(module, "ONNX export")
    # float32 whatever the run trained in: converters and ONNX Runtime take no bfloat16 graphs
    model = inference_model(run, config, precision="float32")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "savedmodel":
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".part",
                                        dir=target.parent))
        else:
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part",
                                        dir=target.parent)
            os.close(fd)
            tmp = Path(name)
    except OSError as exc:
        raise ExportError(f"{target}: cannot write the export ({exc})") from None
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
        diffs = compare_with_keras(model, RUNNERS[fmt](tmp),
                                   verification_inputs(size, config.preprocess))
        worst = max(diffs.values())
        if not worst < tolerance:  # also catches NaN
            raise ExportVerificationError(
                f"{fmt} export of {model_path} is not faithful: max abs probability diff "
                f"{worst:.3g} >= {tolerance:g} ({_format_diffs(diffs)}); nothing was written")
        _publish(tmp, target, overwrite)
        _write_sidecar(target, fmt, size, model_path, diffs, opset)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
    return ExportResult(target, fmt, size, diffs, time.monotonic() - start)


def export_model(run: str | Path, fmt: str, out: str | Path | None = None,
                 overwrite: bool = False, **kwargs) -> Path:
    """Export the best model of `run` as `fmt` (savedmodel | tflite | onnx); returns its path.

    Default location RUN/export/...; raises ExportExistsError rather than replace an existing
    export unless `overwrite`, and ExportVerificationError when the exported model's
    probabilities differ from Keras by 1e-3 or more. `export_run` also returns the diffs.
    """
    return export_run(run, fmt, out, overwrite=overwrite, **kwargs).path


def _write_sidecar(target: Path, fmt: str, size: int, model_path: Path, diffs: dict[str, float],
                   opset: int) -> None:
    from .io import write_text_atomic

    facts = {
        "format": fmt,
        "input": {"shape": [None, size, size, 3], "dtype": "float32",
                  "range": "RGB / 255, prepared by vesselseg.inference.Segmenter.prepare"},
        "output": {"shape": [None, size, size, 1], "dtype": "float32",
                   "meaning": "vessel probability"},
        "source_model": str(model_path.resolve()),
        "source_sha256": file_sha256(model_path),
        "max_abs_diff_vs_keras": diffs,
        "versions": _versions(fmt),
        "created": datetime.now(timezone.utc).isoformat(),
    }
    if fmt == "onnx":
        facts["opset"] = opset
    write_text_atomic(sidecar_path(target), json.dumps(facts, indent=2) + "\n")


def _versions(fmt: str) -> dict[str, str]:
    from importlib import metadata

    names = ["tensorflow", "keras"] + {"onnx": ["tf2onnx", "onnx", "onnxruntime"],
                                       "tflite": ["ai-edge-litert"]}.get(fmt, [])
    versions = {}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


# -- used by Segmenter.from_run(run, backend=...) --------------------------------------------------
def runner_for_run(run: str | Path, fmt: str, export_if_missing: bool = True) -> Runner:
    """The runner of the default export of `run` in `fmt`, exporting it first when missing.

    An export whose sidecar says it came from another best.keras than the run's current one, or
    that takes another input size than the run now works at, is refused as stale (re-export it
    with --overwrite).
    """
    from .inference import export_size, run_files

    run, model_path, config = run_files(run)
    path = default_export_path(run, fmt)
    if not path.exists():
        if not export_if_missing:
            raise ModelLoadError(f"{run}: no {fmt} export at {path}; create it with: "
                                 f"python -m vesselseg.export --run {run} --format {fmt}")
        try:
            export_run(run, fmt)
        except ExportExistsError:
            pass  # another process exported it meanwhile
        except ExportError as exc:
            raise ModelLoadError(f"{run}: cannot export the model for the {fmt} backend: "
                                 f"{exc}") from None
    side = sidecar_path(path)
    if side.exists():
        facts = json.loads(side.read_text(encoding="utf-8"))
        recorded = facts.get("source_sha256")
        side_size = (facts.get("input", {}).get("shape") or [None, None])[1]
        size = export_size(config)
        stale = None
        if recorded and recorded != file_sha256(model_path):
            stale = f"it was exported from another {model_path.name}"
        elif side_size is not None and side_size != size:
            stale = (f"it takes {side_size}x{side_size} inputs and the run now works at "
                     f"{size}x{size}")
        if stale:
            raise ModelLoadError(f"{path} is stale: {stale}; re-export with: python -m "
                                 f"vesselseg.export --run {run} --format {fmt} --overwrite")
    return load_runner(fmt, path)


# -- command line ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vesselseg.export",
        description="Export the best model of a training run as a TensorFlow SavedModel, a "
                    "TFLite flatbuffer or an ONNX model, with a fixed input of the run's "
                    "working size (else its training size; [N, size, size, 3] float32, dynamic "
                    "N), then verify it against the Keras model (max abs probability diff < "
                    "1e-3). ONNX needs "
                    f"{INSTALL_HINT}.")
    parser.add_argument("--run", required=True, help="run folder from vesselseg.train")
    parser.add_argument("--format", required=True, choices=FORMATS, dest="fmt",
                        help="savedmodel (a folder), tflite or onnx (one file)")
    parser.add_argument("--out", help="output path (default: RUN/export/savedmodel, "
                                      "RUN/export/model.tflite or RUN/export/model.onnx)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset (default {DEFAULT_OPSET})")
    return parser


def _main(args: argparse.Namespace) -> int:
    result = export_run(args.run, args.fmt, args.out, overwrite=args.overwrite, opset=args.opset)
    print(f"exported {result.format}: {result.path}")
    print(f"input [N, {result.size}, {result.size}, 3] float32 -> vessel probability "
          f"[N, {result.size}, {result.size}, 1]")
    print(f"verified against Keras: max abs diff {result.max_abs_diff:.3g} "
          f"({_format_diffs(result.diffs)}; tolerance {TOLERANCE:g}) in {result.seconds:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
