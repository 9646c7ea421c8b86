"""Model runners: one interface over the Keras model and its ONNX, TFLite and SavedModel exports.

A runner is a callable float32 batch [N, S, S, 3] (RGB / 255) -> vessel probabilities float32
[N, S, S], with `size` (its fixed input side, None when any side divisible by 2**depth works) and
`precision` (what it computes in). The Segmenter, the export verification and the speed
benchmark all run models through these classes. Keras models are loaded in safe mode, and a
model file whose architecture carries code is refused before Keras reads it.
"""
from __future__ import annotations

import json
import os
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import ConfigError, ModelFileError, RunFolderError

BACKENDS = ("keras", "onnx", "tflite")
EXPORT_INSTALL_HINT = 'pip install "vesselseg[export]"'
#: Most bytes of a .keras archive's config.json read to look for code (a real one is ~100 KB).
MAX_ARCHITECTURE_BYTES = 64 * 2**20


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"backend: unknown {backend!r}; valid backends: {', '.join(BACKENDS)}")
    return backend


def need_module(module: str, what: str):
    """Import an optional dependency, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModelFileError(f"{what} needs the Python package {module.split('.')[0]!r} "
                             f"({exc}); install it with: {EXPORT_INSTALL_HINT}") from None


# -- Keras ---------------------------------------------------------------------------------
def load_keras_model(path: str | Path):
    """Load a .keras file in safe mode: a file carrying code (Lambda layers...) is refused."""
    import keras

    from . import metrics, model  # noqa: F401  (registers the custom metric and layer classes)

    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: model file does not exist")
    if not zipfile.is_zipfile(path):  # Keras would call it "File not found"
        kind = ("an HDF5 file (a legacy .h5 model?)" if _is_hdf5(path)
                else "truncated or not a model")
        raise ModelFileError(f"{path}: not a .keras archive: {kind}; vesselseg models are "
                             f".keras zip files written by vesselseg train")
    code = code_in_model_file(path)
    if code:
        raise ModelFileError(f"{path}: refused by safe mode, the file contains code ({code}); "
                             f"vesselseg models never do")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except ValueError as exc:
        if "safe_mode" in str(exc) or "lambda" in str(exc).lower():
            raise ModelFileError(f"{path}: refused by Keras safe mode, the file contains code "
                                 f"(e.g. a Lambda layer); vesselseg models never do") from None
        raise ModelFileError(f"{path}: not a loadable vesselseg model ({_short(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - zip/h5/JSON errors all mean "not a model"
        raise ModelFileError(f"{path}: not a loadable vesselseg model "
                             f"({type(exc).__name__}: {_short(exc)})") from None


def _is_hdf5(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(8) == b"\x89HDF\r\n\x1a\n"


def _short(exc: Exception, limit: int = 300) -> str:
    """First line of an exception message, cut to `limit` characters (Keras's are pages long)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def code_in_model_file(path: Path) -> str | None:
    """What in a .keras archive's architecture is code rather than Keras layers: a Lambda layer
    or an object from a module outside keras/vesselseg. None when clean or not a .keras archive
    (then Keras itself reports the problem). The architecture is only read, never executed."""
    try:
        with zipfile.ZipFile(path) as archive:
            if archive.getinfo("config.json").file_size > MAX_ARCHITECTURE_BYTES:
                return f"an architecture description over {MAX_ARCHITECTURE_BYTES:,} bytes"
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    stack = [{k: v for k, v in config.items() if k != "compile_config"}
             if isinstance(config, dict) else config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            name, module = node.get("class_name"), node.get("module")
            if name in ("Lambda", "__lambda__"):
                return "a Lambda layer"
            if isinstance(module, str) and module.split(".")[0] not in ("keras", "vesselseg"):
                return f"{name!r} from module {module!r}"
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return None


def inference_model(model_path: str | Path, config, precision: str | None = None):
    """A trained model rebuilt for inference: batch norm folded into the convolutions (the same
    function, fewer passes over the feature maps; see `model.folded_batch_norm_weights`),
    computing in `precision` ("float32" or "bfloat16"; None: the policy it was trained with)."""
    from .devices import dtype_policy
    from .model import folded_batch_norm_weights, get_model, set_layer_weights, trained_policy

    trained = load_keras_model(model_path)
    policy = {"float32": "float32", "bfloat16": "mixed_bfloat16"}.get(precision,
                                                                       trained_policy(trained))
    with dtype_policy(policy):
        model = get_model(config.architecture, base_filters=config.base_filters,
                          depth=config.depth, batch_norm=False)
    set_layer_weights(model, folded_batch_norm_weights(trained))
    return model


class KerasRunner:
    """A Keras model as a runner: one traced tf.function, not eager op-by-op calls."""

    size = None  # fully convolutional: any side the U-Net's pooling divides

    def __init__(self, model):
        self.model = model
        self._compiled = None

    @property
    def precision(self) -> str:
        compute = getattr(self.model.dtype_policy, "compute_dtype", "float32")
        return compute if compute in ("bfloat16", "float16") else "float32"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self._compiled is None:
            import tensorflow as tf

            model = self.model
            self._compiled = tf.function(lambda x: model(x, training=False),
                                         reduce_retracing=True)
        out = self._compiled(np.ascontiguousarray(batch, dtype=np.float32))
        return np.asarray(out, dtype=np.float32)[..., 0]


# -- exports -------------------------------------------------------------------------------
def _check_batch(batch: np.ndarray, size: int, what: str) -> np.ndarray:
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    if batch.ndim != 4 or batch.shape[1:] != (size, size, 3):
        raise ModelFileError(f"the {what} model takes [N, {size}, {size}, 3] inputs (the run's "
                             f"working size is fixed at export); got {list(batch.shape)}")
    return batch


def _cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


class OnnxRunner:
    """ONNX Runtime session over an exported model.onnx."""

    precision = "float32"

    def __init__(self, path: str | Path):
        ort = need_module("onnxruntime", "the onnx backend")
        path = Path(path)
        options = ort.SessionOptions()
        # ONNX Runtime's default is one thread per *physical* core as it counts them, which on
        # a 2-vCPU cloud machine was 1: 4.1 s per 704x704 input against 2.1 s with both
        options.intra_op_num_threads = _cpu_count()
        try:
            self.session = ort.InferenceSession(str(path), options,
                                                providers=ort.get_available_providers())
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise ModelFileError(f"{path}: not a loadable ONNX model ({exc})") from None
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

    precision = "float32"

    def __init__(self, path: str | Path):
        path = Path(path)
        interpreter = _tflite_interpreter_class()
        try:
            self.interpreter = interpreter(model_path=str(path), num_threads=os.cpu_count() or 1)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelFileError(f"{path}: not a loadable TFLite model ({exc})") from None
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

    precision = "float32"

    def __init__(self, path: str | Path):
        import tensorflow as tf

        path = Path(path)
        try:
            self.loaded = tf.saved_model.load(str(path))  # keep a reference: it owns the weights
        except Exception as exc:  # noqa: BLE001 - TF raises many error types for a bad folder
            raise ModelFileError(f"{path}: not a loadable SavedModel ({exc})") from None
        self.serve = self.loaded.signatures["serving_default"]
        spec = list(self.serve.structured_input_signature[1].values())[0]
        self.input_name = list(self.serve.structured_input_signature[1])[0]
        self.size = int(spec.shape[1])
        self.path = path

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = _check_batch(batch, self.size, "SavedModel")
        out = list(self.serve(**{self.input_name: batch}).values())[0]
        return np.asarray(out, dtype=np.float32)[..., 0]


#: Export format -> its runner class.
RUNNERS: dict[str, Callable[[Path], Callable]] = {
    "savedmodel": SavedModelRunner, "tflite": TFLiteRunner, "onnx": OnnxRunner}


def load_runner(fmt: str, path: str | Path):
    """The runner of an exported artifact in format `fmt`."""
    if fmt not in RUNNERS:
        raise ModelFileError(f"format: unknown {fmt!r}; valid formats: {', '.join(RUNNERS)}")
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such {fmt} export")
    return RUNNERS[fmt](path)


def sidecar_path(path: str | Path) -> Path:
    """The JSON record beside an export made before exports carried their own (e.g.
    model.onnx.json): shape, source hash, diffs. Read only, for those older exports."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def exported_runner(run, fmt: str, size: int):
    """The runner of a run's default export in `fmt`, which must exist (exporting is an
    explicit step) and match the run: an export of another best.keras, or of another input
    size than the run now works at, is refused as stale (from the record the export carries,
    or the JSON sidecar of an export made before exports described themselves)."""
    from .metadata import read_metadata

    path = run.export_path(fmt)
    name = "pretrained" if run.is_shipped else str(run.path)
    if not path.exists():
        raise RunFolderError(f"{run.path}: no {fmt} export at {path}; create it with: "
                             f"vesselseg export --run {name} --format {fmt}")
    runner = load_runner(fmt, path)
    try:
        facts = read_metadata(path, fmt, session=getattr(runner, "session", None))
        recorded = facts.get("model", {}).get("source_sha256")
        side_size = facts.get("tiling", {}).get("window")
    except ModelFileError:
        side = sidecar_path(path)
        facts = json.loads(side.read_text(encoding="utf-8")) if side.exists() else {}
        recorded = facts.get("source_sha256")
        side_size = (facts.get("input", {}).get("shape") or [None, None])[1]
    stale = None
    if recorded and recorded != run.model_sha256():
        stale = f"it was exported from another {run.MODEL}"
    elif side_size is not None and side_size != size:
        stale = (f"it takes {side_size}x{side_size} inputs and the run now works at "
                 f"{size}x{size}")
    if stale:
        raise RunFolderError(f"{path} is stale: {stale}; re-export with: vesselseg export "
                             f"--run {name} --format {fmt} --overwrite")
    return runner
