"""The one inference engine shared by `test`, `eval`, the threshold choice and the Python API.

A Segmenter holds a model, the preprocessing it was trained with and its decision threshold. It
prepares a photo exactly as training did, predicts at its working size (whole up to 1.5x the
training size, tiled with overlap beyond), optionally averages flipped copies (TTA) and several
magnifications (multi-scale), and maps probabilities back onto the photo's native pixel grid.
"""
from __future__ import annotations

import copy
import json
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import PreprocessConfig, TrainConfig, load_config
from .errors import ConfigError, ModelLoadError, VesselsegError
from .fov import estimate_fov
from .io import read_image
from .transforms import Geometry, to_model_input, to_native

PRETRAINED_DIR = Path(__file__).parent / "pretrained"
MODEL_FILE = "best.keras"
CONFIG_FILE = "config.json"
THRESHOLD_FILE = "threshold.json"
#: Where predictions are computed: the Keras model itself, or an export of it (made on demand
#: into RUN/export/ by vesselseg.export) run by ONNX Runtime or the TFLite interpreter.
BACKENDS = ("keras", "onnx", "tflite")
#: Compute precisions a Keras model can be run in (Segmenter.from_run(precision=...)); "auto"
#: is bfloat16 on a CPU-only machine whose processor has bf16 matrix units, else as trained.
INFERENCE_PRECISIONS = ("auto", "float32", "bfloat16")
#: The shipped model's default: measured to keep its test figures (README "Speed").
PRETRAINED_PRECISION = "auto"
#: The Keras model runs a working image whole up to this multiple of its training size
WHOLE_IMAGE_MAX_SCALE = 1.5
#: `--scales multi`: the magnifications of the working size whose probabilities multi-scale
#: inference averages (chosen on the shipped model's validation images; README "Results").
MULTI_SCALES = (1.0, 1.11, 1.22)


def parse_scales(text: str) -> tuple[float, ...]:
    """"1,1.25" -> (1.0, 1.25); "multi" -> MULTI_SCALES. Each factor multiplies the working
    size; the working image at every factor must be at least the model's input size."""
    if text.strip().lower() == "multi":
        return MULTI_SCALES
    try:
        scales = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"scales: {text!r} is not a comma-separated list of numbers "
                          f"(e.g. 1,1.25) or 'multi'") from None
    if not scales or min(scales) < 1.0 or len(set(scales)) != len(scales):
        raise ConfigError(f"scales: {text!r} must list distinct factors >= 1 (1 = the working "
                          f"size itself)")
    return scales


def setting_key(tta: bool, scales: tuple[float, ...] = (1.0,)) -> str:
    """The name of an inference setting in threshold.json: "" for the plain one, else e.g.
    "flips+scales=1,1.25". A threshold is chosen on validation images for each setting, since
    averaging (most of all over magnifications) shifts the probabilities."""
    parts = (["flips"] if tta else []) + ([f"scales={','.join(f'{x:g}' for x in scales)}"]
                                          if tuple(scales) != (1.0,) else [])
    return "+".join(parts)


def runs_whole_at(working_size: int, training_size: int, depth: int) -> bool:
    """Whether a working size is run in one piece (rather than in windows of the training size):
    up to WHOLE_IMAGE_MAX_SCALE x the training size (memory), and only at sides the U-Net's
    pooling divides exactly. One rule for the Keras path, exports and the speed benchmark."""
    return (working_size % (2**depth) == 0
            and working_size <= WHOLE_IMAGE_MAX_SCALE * training_size)


def export_size(config: TrainConfig) -> int:
    """The fixed input side of a run's exports: its working size when that runs whole, else its
    training size (the windows larger working sizes are cut into)."""
    working, training = config.working_size or config.preprocess.size, config.preprocess.size
    return working if runs_whole_at(working, training, config.depth) else training
#: A runner: float32 batch [N, S, S, 3] (RGB / 255) -> vessel probabilities float32 [N, S, S].
Runner = Callable[[np.ndarray], np.ndarray]


@dataclass
class Prediction:
    probability: np.ndarray  # native HxW float32 in [0, 1]
    mask: np.ndarray  # native HxW bool (probability >= threshold, inside the FOV)
    fov: np.ndarray  # native HxW bool
    threshold: float

    @property
    def vessel_density(self) -> float:
        """Share of FOV pixels predicted as vessel."""
        return float(self.mask.sum() / max(1, self.fov.sum()))


def run_files(run: str | Path) -> tuple[Path, Path, TrainConfig]:
    """(run folder, model path, TrainConfig) of a run folder, with clear errors."""
    run = Path(run)
    if not run.is_dir():
        raise ModelLoadError(f"{run}: run folder does not exist")
    for name in (MODEL_FILE, CONFIG_FILE):
        if not (run / name).exists():
            raise ModelLoadError(f"{run}: not a vesselseg run folder (no {name})")
    return run, run / MODEL_FILE, load_config(TrainConfig, run / CONFIG_FILE)


def load_keras_model(path: str | Path):
    """Load a .keras file in safe mode: a file carrying code (Lambda layers...) is refused."""
    import keras

    from . import metrics, model  # noqa: F401  (register the custom metric and layer classes)

    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: model file does not exist")
    code = _code_in_model_file(path)
    if code:
        raise ModelLoadError(f"{path}: refused by safe mode, the file contains code ({code}); "
                             f"vesselseg models never do")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except ValueError as exc:
        if "safe_mode" in str(exc) or "lambda" in str(exc).lower():
            raise ModelLoadError(f"{path}: refused by Keras safe mode, the file contains code "
                                 f"(e.g. a Lambda layer); vesselseg models never do") from None
        raise ModelLoadError(f"{path}: not a loadable vesselseg model ({_short(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - zip/h5/JSON errors all mean "not a model"
        raise ModelLoadError(f"{path}: not a loadable vesselseg model "
                             f"({type(exc).__name__}: {_short(exc)})") from None


def _short(exc: Exception, limit: int = 300) -> str:
    """First line of an exception message, cut to `limit` characters (Keras's are pages long)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def _code_in_model_file(path: Path) -> str | None:
    """What in a .keras archive's architecture is code rather than Keras layers: a Lambda layer
    or an object from a module outside keras/vesselseg. None when clean or not a .keras archive
    (then Keras itself reports the problem). The architecture is only read, never executed."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
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


class Segmenter:
    """Segment vessels in photos of any size with a trained model."""

    def __init__(self, model, preprocess: PreprocessConfig, threshold: float = 0.5,
                 tta: bool = False, working_size: int | None = None, tile_overlap: int = 64,
                 batch_size: int = 4, source: str = "", runner: Runner | None = None,
                 backend: str = "keras", depth: int = 4, scales: tuple[float, ...] = (1.0,)):
        self.model = model  # None when an exported model runs (backend onnx or tflite)
        self._compiled = None
        self.runner: Runner = runner if runner is not None else self._keras_run
        self.backend = backend
        self.preprocess = preprocess
        self.threshold = float(threshold)
        self.tta = tta
        self.depth = depth  # the U-Net's pooling steps: whole inputs must divide by 2**depth
        self.working_size = working_size or preprocess.size
        if self.working_size < preprocess.size:
            raise ConfigError(f"working_size: {self.working_size} is smaller than the model's "
                              f"input size {preprocess.size}")
        if self.working_size < self.window:
            raise ConfigError(f"working_size: {self.working_size} is smaller than the {backend} "
                              f"export's fixed input size {self.window}; use --backend keras, or "
                              f"re-export the run after changing its working_size")
        self.tile_overlap = tile_overlap
        self.batch_size = batch_size
        self.source = source
        self.scales = tuple(float(x) for x in scales)
        #: Where the threshold came from: "validation" (chosen on validation images for this
        #: very setting), "validation, plain setting" (a TTA / multi-scale setting without a
        #: threshold of its own), or "given".
        self.threshold_source = "given"

    @property
    def setting(self) -> str:
        return setting_key(self.tta, self.scales)

    @property
    def scale_sizes(self) -> list[int]:
        """The working sizes multi-scale inference runs at: each factor times the working size,
        rounded to a side the U-Net's pooling divides."""
        step = 2**self.depth
        return [int(round(self.working_size * factor / step)) * step for factor in self.scales]

    def at_size(self, size: int) -> Segmenter:
        """The same model (shared, not copied) working at `size`, one scale."""
        single = copy.copy(self)
        single.working_size, single.scales = size, (1.0,)
        return single

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_run(cls, run: str | Path, backend: str = "keras", precision: str | None = None,
                 **kwargs) -> Segmenter:
        """Load the best model, its config and its validation threshold from a run folder.

        The Keras model is rebuilt for inference with its batch norm folded into the
        convolutions (`inference_model`), computing in `precision`: "float32" or "bfloat16", or
        None (default) as it was trained; "auto" picks bfloat16 where the CPU runs it natively
        and no GPU is present, else keeps the precision it was trained in.

        backend "onnx" or "tflite" runs the run's export (RUN/export/model.onnx or model.tflite)
        instead of the Keras model; a missing export is made (and verified) on the spot, which
        needs the `export` extra and a writable run folder. A stale export (from another
        best.keras) is refused with a hint to re-export it.
        """
        check_backend(backend)
        if precision is not None and precision not in INFERENCE_PRECISIONS:
            raise ConfigError(f"precision: unknown {precision!r}; valid: "
                              f"{', '.join(INFERENCE_PRECISIONS)}")
        precision = resolve_inference_precision(precision, backend)
        if precision == "bfloat16" and backend != "keras":
            raise ConfigError(f"precision: bfloat16 runs with the keras backend only, not "
                              f"{backend!r} (exports are float32)")
        run, _, config = run_files(run)
        if kwargs.get("working_size") is None:  # the size the run was trained to work at
            kwargs["working_size"] = config.working_size or None
        threshold = kwargs.pop("threshold", None)
        setting = setting_key(kwargs.get("tta", False), tuple(kwargs.get("scales", (1.0,))))
        source = "given"
        if threshold is None:
            threshold, source = read_threshold(run, setting)
        if backend == "keras":
            model, runner = inference_model(run, config, precision), None
        else:
            from .export import runner_for_run

            model, runner = None, runner_for_run(run, backend)
        segmenter = cls(model, config.preprocess, threshold=threshold, source=str(run),
                        runner=runner, backend=backend, depth=config.depth, **kwargs)
        segmenter.threshold_source = source
        return segmenter

    @classmethod
    def pretrained(cls, **kwargs) -> Segmenter:
        """The model shipped inside the package (precision default: PRETRAINED_PRECISION)."""
        if kwargs.get("precision") is None:
            kwargs["precision"] = PRETRAINED_PRECISION
        if not (PRETRAINED_DIR / MODEL_FILE).exists():
            raise ModelLoadError("no pretrained model is shipped in this version of vesselseg; "
                                 "train one (python -m vesselseg.train) and pass --run RUN_FOLDER")
        return cls.from_run(PRETRAINED_DIR, **kwargs)

    @property
    def compute_precision(self) -> str:
        """The dtype the model computes in, for the record: "float32", "bfloat16" or "float16"
        (exports always run float32)."""
        if self.model is None:
            return "float32"
        compute = getattr(self.model.dtype_policy, "compute_dtype", "float32")
        return compute if compute in ("bfloat16", "float16") else "float32"

    # -- prediction ----------------------------------------------------------------------------
    def prepare(self, image: np.ndarray, fov: np.ndarray | None = None):
        """(model input float32 SxSx3, native FOV, geometry) for one RGB uint8 photo."""
        if fov is None:
            fov = estimate_fov(image)
        model_image, _, box = to_model_input(image, fov, self.preprocess, self.working_size)
        return model_image.astype(np.float32) / 255.0, fov, box

    @property
    def window(self) -> int:
        """The side of the model's input windows: an export's fixed input size (the run's
        working size when it was exported), else the training size."""
        return int(getattr(self.runner, "size", self.preprocess.size))

    @property
    def runs_whole(self) -> bool:
        """True when the model runs on the whole working image at once. The Keras model is fully
        convolutional, so a working size up to WHOLE_IMAGE_MAX_SCALE x the training size costs
        only its extra pixels (576: 1.27x, not the 4 windows of tiling); an export takes its
        fixed size whole, and larger sizes would need too much memory, so those use windows."""
        if self.working_size == self.window:
            return True
        return self.backend == "keras" and runs_whole_at(self.working_size, self.preprocess.size,
                                                         self.depth)

    def predict_prepared(self, batch: np.ndarray) -> np.ndarray:
        """Working-size probability maps of a batch of `prepare`d inputs (N x S x S x C)."""
        if self.runs_whole:
            return self._predict_tensor(batch)
        return np.stack([self._predict_tiled(x) for x in batch])

    def _predict_tensor(self, batch: np.ndarray) -> np.ndarray:
        if not self.tta:
            return self._run(batch)
        total = np.zeros(batch.shape[:3], dtype=np.float32)
        for flip_axes in ((), (2,), (1,), (1, 2)):
            flipped = np.flip(batch, flip_axes) if flip_axes else batch
            out = self._run(np.ascontiguousarray(flipped))
            total += np.flip(out, flip_axes) if flip_axes else out
        return total / 4.0

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.runner(batch)

    def _keras_run(self, batch: np.ndarray) -> np.ndarray:
        if self._compiled is None:  # a traced graph, not eager op-by-op calls
            import tensorflow as tf

            model = self.model
            self._compiled = tf.function(lambda x: model(x, training=False),
                                         reduce_retracing=True)
        out = self._compiled(np.ascontiguousarray(batch, dtype=np.float32))
        return np.asarray(out, dtype=np.float32)[..., 0]

    def _predict_tiled(self, image: np.ndarray) -> np.ndarray:
        """Sliding windows of the model's input size with overlap, blended by a tapered weight."""
        tile = self.window
        height, width = image.shape[:2]
        step = max(1, tile - self.tile_overlap)
        ys = _tile_starts(height, tile, step)
        xs = _tile_starts(width, tile, step)
        weight = _blend_weight(tile, self.tile_overlap)
        total = np.zeros((height, width), np.float32)
        norm = np.zeros((height, width), np.float32)
        windows = [(y, x) for y in ys for x in xs]
        for start in range(0, len(windows), self.batch_size):
            chunk = windows[start:start + self.batch_size]
            batch = np.stack([image[y:y + tile, x:x + tile] for y, x in chunk])
            out = self._predict_tensor(batch)
            for (y, x), probability in zip(chunk, out):
                total[y:y + tile, x:x + tile] += probability * weight
                norm[y:y + tile, x:x + tile] += weight
        return total / np.maximum(norm, 1e-6)

    def finish(self, probability: np.ndarray, fov: np.ndarray, box: Geometry) -> Prediction:
        native = to_native(probability, box) * fov
        return Prediction(native, (native >= self.threshold) & fov, fov, self.threshold)

    def predict(self, image: np.ndarray, fov: np.ndarray | None = None) -> Prediction:
        """Probability map and mask at the photo's native size."""
        if self.scales != (1.0,):
            return self._predict_scales(image, fov)
        model_input, fov, box = self.prepare(image, fov)
        return self.finish(self.predict_prepared(model_input[None])[0], fov, box)

    def _predict_scales(self, image: np.ndarray, fov: np.ndarray | None) -> Prediction:
        """The mean of the native-size probabilities at every scale, then thresholded: a larger
        working image shows thin vessels wider, a smaller one more context around them."""
        if fov is None:
            fov = estimate_fov(image)
        total = np.zeros(fov.shape, np.float32)
        for size in self.scale_sizes:  # native maps summed; FOV and threshold applied once
            single = self.at_size(size)
            model_input, _, box = single.prepare(image, fov)
            total += to_native(single.predict_prepared(model_input[None])[0], box)
        native = total / len(self.scales) * fov
        return Prediction(native, (native >= self.threshold) & fov, fov, self.threshold)

    def predict_many(self, items: Iterable, load: Callable[[object], tuple],
                     workers: int = 2, prefetch: int = 8) -> Iterator[tuple[object, object]]:
        """Yield (item, Prediction or VesselsegError) in order. Reading and preparing the next
        photos runs in threads while the model works on the current batch (multi-scale: one
        photo at a time, each prepared at every scale)."""
        multiscale = self.scales != (1.0,)

        def prepare(item):
            try:
                image, fov = load(item)
                if multiscale:
                    return item, (image, fov)
                return item, (image, *self.prepare(image, fov))
            except VesselsegError as exc:
                return item, exc
            except (OSError, ValueError) as exc:
                return item, VesselsegError(f"{item}: {exc}")

        ready: queue.Queue = queue.Queue(maxsize=prefetch)
        done = object()

        def producer():
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for result in pool.map(prepare, items):
                    ready.put(result)
            ready.put(done)

        thread = threading.Thread(target=producer, daemon=True)
        thread.start()
        pending: list = []
        finished = False
        while not finished:
            entry = ready.get()
            if entry is done:
                finished = True
            elif multiscale:
                item, payload = entry
                yield item, payload if isinstance(payload, Exception) else self.predict(*payload)
                continue
            else:
                pending.append(entry)
            good = [p for p in pending if not isinstance(p[1], Exception)]
            if pending and (finished or len(good) >= self.batch_size or ready.empty()):
                if good:
                    batch = np.stack([p[1][1] for p in good])
                    outputs = iter(self.predict_prepared(batch))
                for item, payload in pending:
                    if isinstance(payload, Exception):
                        yield item, payload
                    else:
                        _, _, fov, box = payload
                        yield item, self.finish(next(outputs), fov, box)
                pending = []
        thread.join()


def _tile_starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def _blend_weight(tile: int, overlap: int) -> np.ndarray:
    ramp = np.ones(tile, np.float32)
    if overlap > 0:
        edge = np.linspace(0.05, 1.0, overlap, dtype=np.float32)
        ramp[:overlap] = edge
        ramp[-overlap:] = edge[::-1]
    return np.outer(ramp, ramp)


def inference_model(run: str | Path, config: TrainConfig, precision: str | None = None):
    """The run's model rebuilt for inference: batch norm folded into the convolutions (the same
    function, fewer passes over the feature maps; see `folded_batch_norm_weights`), computing in
    `precision` ("float32" or "bfloat16"; None: the dtype policy it was trained with)."""
    from .devices import dtype_policy
    from .model import folded_batch_norm_weights, get_model, set_layer_weights, trained_policy

    trained = load_keras_model(Path(run) / MODEL_FILE)
    policy = {"float32": "float32", "bfloat16": "mixed_bfloat16"}.get(precision,
                                                                       trained_policy(trained))
    with dtype_policy(policy):
        model = get_model(config.architecture, base_filters=config.base_filters,
                          depth=config.depth, batch_norm=False)
    set_layer_weights(model, folded_batch_norm_weights(trained))
    return model


def add_inference_arguments(parser) -> None:
    """The options of every command that runs a model (`test`, `eval`)."""
    parser.add_argument("--tta", action="store_true", help="average flipped predictions")
    add_scales_argument(parser)
    parser.add_argument("--backend", choices=BACKENDS, default="keras",
                        help="run the Keras model (default) or its ONNX / TFLite export "
                             "(RUN/export/, made on first use, so the run folder must be "
                             "writable; ONNX needs pip install \"vesselseg[export]\")")
    parser.add_argument("--working-size", type=int,
                        help="run the model on an NxN version of the FOV crop: whole up to "
                             "1.5x the training size, else in overlapping windows of the "
                             "training size (e.g. 1024 for large photos; default: the run's "
                             "working_size, else the training size; an export takes only its "
                             "own size or larger)")
    parser.add_argument("--precision", choices=INFERENCE_PRECISIONS,
                        help="compute precision of the Keras model: bfloat16 is faster on CPUs "
                             "with AVX512-BF16 or AMX; auto = bfloat16 there (without a GPU), "
                             "else as trained (default: auto for the shipped model; a --run runs "
                             "as trained). train's auto differs: it keeps float32 on CPUs")
    parser.add_argument("--threshold", type=float,
                        help="decision threshold (default: the model's validation-chosen one)")


def _scales_argument(text: str) -> tuple[float, ...]:
    """parse_scales for argparse: a bad list is a usage error (exit 2), not a traceback."""
    import argparse

    try:
        return parse_scales(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_scales_argument(parser, prefix: str = "") -> None:
    """--scales, for every command that runs (or chooses a threshold for) a model."""
    multi = ",".join(f"{x:g}" for x in MULTI_SCALES)
    parser.add_argument("--scales", type=_scales_argument, default=(1.0,), metavar="LIST",
                        help=f"{prefix}average predictions at these magnifications of the "
                             f"working size, e.g. 1,1.25, or 'multi' for {multi} (more accurate, "
                             f"slower: the work grows with the sum of the squared factors; "
                             f"default 1)")


def segmenter_from_args(args) -> Segmenter:
    """The Segmenter of `--run` (default: the shipped model) with the options above."""
    kwargs = {"tta": args.tta, "scales": args.scales, "backend": args.backend,
              "precision": args.precision}
    if args.threshold is not None:
        kwargs["threshold"] = args.threshold
    if args.working_size is not None:
        kwargs["working_size"] = args.working_size
    return Segmenter.from_run(args.run, **kwargs) if args.run else Segmenter.pretrained(**kwargs)


def resolve_inference_precision(precision: str | None, backend: str = "keras") -> str | None:
    """"auto" -> "bfloat16" for the Keras backend on a CPU-only machine with bf16 units, else
    None (as trained); other values unchanged."""
    if precision != "auto":
        return precision
    if backend != "keras":  # exports run float32; no TensorFlow import for them
        return None
    from .devices import cpu_has_bf16, gpus

    return "bfloat16" if cpu_has_bf16() and not gpus() else None


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"backend: unknown {backend!r}; valid backends: {', '.join(BACKENDS)}")
    return backend


def read_threshold(run: str | Path, setting: str = "") -> tuple[float, str]:
    """(threshold, source) of a run for an inference setting (`setting_key`): the one chosen
    on validation images for that setting, else the plain setting's, else 0.5."""
    path = Path(run) / THRESHOLD_FILE
    if not path.exists():
        return 0.5, "default 0.5 (the run has no threshold.json)"
    chosen = json.loads(path.read_text(encoding="utf-8"))
    if not setting:
        return float(chosen["threshold"]), "validation"
    own = chosen.get("settings", {}).get(setting)
    if own is not None:
        return float(own["threshold"]), "validation"
    return float(chosen["threshold"]), "validation, plain setting"


def load_photo(path: str | Path) -> tuple[np.ndarray, None]:
    return read_image(path), None
