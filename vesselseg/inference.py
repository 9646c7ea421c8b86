"""The Segmenter: the one inference facade shared by `test`, `eval`, calibration and the API.

A Segmenter holds a runner (`backends`: the Keras model or an export), the preprocessing the
model was trained with and its decision threshold. It prepares a photo exactly as training did,
predicts at its working size (whole up to 1.5x the training size, tiled with overlap beyond:
`tiling`), optionally averages flipped copies (TTA) and several magnifications (multi-scale),
and maps probabilities back onto the photo's native pixel grid.

Over 350 lines: the Segmenter with its input contract and batched streaming; the pure pieces
live in `tiling` and `backends`.
"""
from __future__ import annotations

import collections
import copy
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backends import KerasRunner, check_backend, exported_runner, inference_model
from .config import PreprocessConfig
from .errors import ConfigError, ModelFileError, ModelLoadError, VesselsegError
from .fov import estimate_fov
from .io import read_image
from .runs import PRETRAINED_NAME, RunFolder
from .tiling import (
    average_flips,
    check_working_side,
    export_side,
    predict_tiled,
    runs_whole_at,
    scale_sizes,
)
from .transforms import Geometry, to_model_input, to_native

#: Compute precisions a Keras model can be run in (Segmenter.from_run(precision=...)); "auto"
#: is bfloat16 on a CPU-only machine whose processor has bf16 matrix units, else as trained.
INFERENCE_PRECISIONS = ("auto", "float32", "bfloat16")
#: The shipped model's default: measured to keep its test figures (docs/speed.md).
PRETRAINED_PRECISION = "auto"
#: `--scales multi`: the magnifications of the working size whose probabilities multi-scale
#: inference averages (chosen on the shipped model's validation images; docs/results.md).
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
    if not all(1.0 <= scale <= 16.0 for scale in scales):  # NaN, inf and 1e9 too
        raise ConfigError(f"scales: {text!r} must list factors from 1 to 16 (1 = the working "
                          f"size itself)")
    if not scales or len(set(scales)) != len(scales):
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


def export_size(config) -> int:
    """The fixed input side of a run's exports (`tiling.export_side` of its config)."""
    working, training = config.working_size or config.preprocess.size, config.preprocess.size
    return export_side(working, training, config.depth)


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

    def morphology(self, pixel_size_um: float | None = None) -> dict[str, float | str]:
        """The vessel measurements of the mask inside the FOV (`morphology.measure`: densities,
        fractal dimensions, widths, graph, tortuosity; `_um` columns need the pixel size)."""
        from .morphology import measure

        return measure(self.mask, self.fov, pixel_size_um)


class Segmenter:
    """Segment vessels in photos of any size with a trained model."""

    def __init__(self, model, preprocess: PreprocessConfig, threshold: float = 0.5,
                 tta: bool = False, working_size: int | None = None, tile_overlap: int = 64,
                 batch_size: int = 4, source: str = "", runner: Runner | None = None,
                 backend: str = "keras", depth: int = 4, scales: tuple[float, ...] = (1.0,)):
        self.model = model  # the Keras model; None when an export runs (backend onnx, tflite)
        self.runner: Runner = runner if runner is not None else KerasRunner(model)
        self.backend = backend
        self.preprocess = preprocess
        self.threshold = float(threshold)
        self.tta = tta
        self.depth = depth  # the U-Net's pooling steps: whole inputs must divide by 2**depth
        self.working_size = check_working_side(working_size or preprocess.size)
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
        #: For the record (eval's results.csv, summary.json): the run's name and version
        #: (the shipped model's release, else the run's settings fingerprint).
        self.model_name, self.model_version = "", ""
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
        return scale_sizes(self.working_size, self.scales, self.depth)

    def at_size(self, size: int) -> Segmenter:
        """The same model (shared, not copied) working at `size`, one scale."""
        single = copy.copy(self)
        single.working_size, single.scales = size, (1.0,)
        return single

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_run(cls, run: str | Path | RunFolder, backend: str = "keras",
                 precision: str | None = None, **kwargs) -> Segmenter:
        """Load the model, its config and its validation threshold from a run folder (or
        "pretrained", the shipped model).

        The Keras model is rebuilt for inference with its batch norm folded into the
        convolutions (`backends.inference_model`), computing in `precision`: "float32" or
        "bfloat16", or None (default) as it was trained; "auto" picks bfloat16 where the CPU
        runs it natively and no GPU is present, else keeps the precision it was trained in.

        backend "onnx" or "tflite" runs the run's export (made by `vesselseg export`) instead of
        the Keras model; a missing or stale export is an error that says how to make it.
        """
        check_backend(backend)
        if precision is not None and precision not in INFERENCE_PRECISIONS:
            raise ConfigError(f"precision: unknown {precision!r}; valid: "
                              f"{', '.join(INFERENCE_PRECISIONS)}")
        precision = resolve_inference_precision(precision, backend)
        if precision == "bfloat16" and backend != "keras":
            raise ConfigError(f"precision: bfloat16 runs with the keras backend only, not "
                              f"{backend!r} (exports are float32)")
        folder = RunFolder.existing(run)
        config = folder.config()
        if kwargs.get("working_size") is None:  # the size the run was trained to work at
            kwargs["working_size"] = config.working_size or None
        threshold = kwargs.pop("threshold", None)
        setting = setting_key(kwargs.get("tta", False), tuple(kwargs.get("scales", (1.0,))))
        source = "given"
        if threshold is None:
            threshold, source = folder.threshold(setting)
        if backend == "keras":
            model = inference_model(folder.model_path, config, precision)
            runner = KerasRunner(model)
        else:
            model, runner = None, exported_runner(folder, backend, export_size(config))
        segmenter = cls(model, config.preprocess, threshold=threshold, source=str(folder),
                        runner=runner, backend=backend, depth=config.depth, **kwargs)
        segmenter.threshold_source = source
        status = folder.status()
        segmenter.model_name = status.get("model_name") or folder.path.name
        segmenter.model_version = status.get("model_version") or status.get("fingerprint", "")
        return segmenter

    @classmethod
    def from_export(cls, path: str | Path, backend: str | None = None, fmt: str | None = None,
                    **kwargs) -> Segmenter:
        """The Segmenter of a self-describing export (.onnx, .tflite, SavedModel folder) at any
        path: preprocessing, working size, tiling and thresholds come from the file itself
        (`vesselseg.runtime.load` is the same call; ONNX and TFLite need no TensorFlow). The
        format is `fmt`, default from the file; `backend`, when given, must match it. kwargs as
        for Segmenter (tta, scales, threshold, working_size, batch_size...); the threshold
        defaults to the one the run chose on validation images for that setting."""
        from .backends import load_runner
        from .config import from_dict
        from .metadata import export_format, read_metadata, threshold_for

        path = Path(path)
        fmt = fmt or export_format(path)
        if backend is not None and backend not in ("keras", fmt):
            raise ConfigError(f"backend: {path} is a {fmt} export, not {backend}; pass "
                              f"--backend {fmt} or leave --backend out")
        runner = load_runner(fmt, path)
        facts = read_metadata(path, fmt, session=getattr(runner, "session", None))
        try:
            preprocess = from_dict(PreprocessConfig, facts["preprocess"])
            tiling = facts["tiling"]
            working = int(facts["working_size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{path}: its vesselseg metadata is incomplete "
                                 f"({exc})") from None
        if kwargs.get("working_size") is None:
            kwargs["working_size"] = working
        kwargs.setdefault("tile_overlap", int(tiling.get("overlap", 64)))
        threshold = kwargs.pop("threshold", None)
        source = "given"
        if threshold is None:
            setting = setting_key(kwargs.get("tta", False), tuple(kwargs.get("scales", (1.0,))))
            threshold, source = threshold_for(facts, setting)
        runner.precision = str(facts.get("precision", "float32"))
        segmenter = cls(None, preprocess, threshold=threshold, source=str(path), runner=runner,
                        backend=fmt, depth=int(tiling.get("depth", 4)), **kwargs)
        segmenter.threshold_source = source
        model = facts.get("model") or {}
        segmenter.model_name = str(model.get("name", ""))
        segmenter.model_version = str(model.get("version", ""))
        segmenter.metadata = facts
        return segmenter

    @classmethod
    def pretrained(cls, **kwargs) -> Segmenter:
        """The model shipped inside the package (precision default: PRETRAINED_PRECISION)."""
        if kwargs.get("precision") is None:
            kwargs["precision"] = PRETRAINED_PRECISION
        shipped = RunFolder.named(PRETRAINED_NAME)
        if not shipped.model_path.exists():
            raise ModelLoadError("no pretrained model is shipped in this version of vesselseg; "
                                 "train one (vesselseg train) and pass --run RUN_FOLDER")
        return cls.from_run(shipped, **kwargs)

    @property
    def compute_precision(self) -> str:
        """The dtype the model computes in, for the record: "float32", "bfloat16" or "float16"
        (exports always run float32)."""
        return getattr(self.runner, "precision", "float32")

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
        return int(getattr(self.runner, "size", None) or self.preprocess.size)

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
        return average_flips(batch, self.runner) if self.tta else self.runner(batch)

    def _predict_tiled(self, image: np.ndarray) -> np.ndarray:
        """Sliding windows of the model's input size with overlap, blended by a tapered weight."""
        return predict_tiled(image, self._predict_tensor, self.window, self.tile_overlap,
                             self.batch_size)

    def finish(self, probability: np.ndarray, fov: np.ndarray, box: Geometry) -> Prediction:
        native = to_native(probability, box) * fov
        return Prediction(native, (native >= self.threshold) & fov, fov, self.threshold)

    def predict(self, image, fov: np.ndarray | None = None):
        """Probability map and mask at the photo's native size.

        `image`: one photo, as
          - an HxW, HxWx1, HxWx3 (RGB) or HxWx4 (RGBA, composited on black) numpy array of
            uint8; of uint16 over its full range (65535 is white, as in scikit-image); of
            another integer type, read as 8-bit when its values stay within 255, else as
            16-bit; or of floats in [0, 1] (scikit-image's convention);
          - a PIL image, or the path of an image file (read as `eval` reads it).
        A batch (an NxHxWxC array, or a list of any of the above) returns a list of
        Predictions, run `batch_size` at a time. `fov` (optional, native HxW bool, a list for
        a batch) replaces the estimated field of view. Anything else raises a TypeError or
        ValueError saying what is accepted."""
        if _is_batch(image):
            photos = list(image)
            fovs = [None] * len(photos) if fov is None else list(fov)
            if len(fovs) != len(photos):
                raise ValueError(f"fov: {len(fovs)} masks for {len(photos)} photos")
            results = []
            for _, result in self.predict_many(range(len(photos)),
                                               lambda i: (as_photo(photos[i]), fovs[i])):
                if isinstance(result, Exception):
                    raise result
                results.append(result)
            return results
        image = as_photo(image)
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
                     workers: int = 2, prefetch: int | None = None
                     ) -> Iterator[tuple[object, object]]:
        """Yield (item, Prediction or VesselsegError) in order. Reading and preparing the next
        photos runs in threads while the model works on the current batch (multi-scale: one
        photo at a time, each prepared at every scale).

        At most `prefetch` (default: a batch) prepared photos wait, plus `workers` being read,
        whatever the number of items: memory stays bounded on a folder of 100,000 photos. A
        photo that cannot be read or prepared, out of memory included, is that photo's error,
        never a hang."""
        multiscale = self.scales != (1.0,)

        def prepare(item):
            try:
                image, fov = load(item)
                if multiscale:
                    return item, (image, fov)
                return item, (image, *self.prepare(image, fov))
            except VesselsegError as exc:
                return item, exc
            except (OSError, ValueError, TypeError) as exc:
                return item, VesselsegError(f"{item}: {exc}")
            except MemoryError:
                return item, VesselsegError(f"{item}: not enough memory to read and prepare "
                                            f"this photo")

        ready: queue.Queue = queue.Queue(maxsize=prefetch or self.batch_size)
        done, stop = object(), threading.Event()

        def put(entry) -> None:
            while not stop.is_set():
                try:
                    ready.put(entry, timeout=0.2)
                    return
                except queue.Full:
                    continue

        def producer():
            try:
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    window: collections.deque = collections.deque()
                    for item in items:
                        if stop.is_set():
                            break
                        window.append(pool.submit(prepare, item))
                        if len(window) > workers:
                            put(window.popleft().result())
                    while window and not stop.is_set():
                        put(window.popleft().result())
            except BaseException as exc:  # noqa: BLE001 - reported to the consumer, never lost
                put(exc)
            finally:
                put(done)

        thread = threading.Thread(target=producer, daemon=True)
        thread.start()
        pending: list = []
        finished = False
        try:
            while not finished:
                entry = ready.get()
                if entry is done:
                    finished = True
                elif isinstance(entry, BaseException):
                    raise entry
                elif multiscale:
                    item, payload = entry
                    yield item, (payload if isinstance(payload, Exception)
                                 else call_interruptibly(self.predict, *payload))
                    continue
                else:
                    pending.append(entry)
                good = [p for p in pending if not isinstance(p[1], Exception)]
                if pending and (finished or len(good) >= self.batch_size or ready.empty()):
                    if good:
                        batch = np.stack([p[1][1] for p in good])
                        outputs = iter(call_interruptibly(self.predict_prepared, batch))
                    for item, payload in pending:
                        if isinstance(payload, Exception):
                            yield item, payload
                        else:
                            _, _, fov, box = payload
                            yield item, self.finish(next(outputs), fov, box)
                    pending = []
        finally:
            stop.set()
            thread.join(timeout=5)


#: Set when Ctrl-C left a model call running (`call_interruptibly`): the process must then end
#: with os._exit (`cli.exit_now_if_model_call_abandoned`), as finalizing the interpreter under a
#: running TensorFlow op crashes it (exit 139, tried).
MODEL_CALL_ABANDONED = threading.Event()


def call_interruptibly(function: Callable, *args):
    """`function(*args)`, run in a daemon thread when called from the main thread, so that Ctrl-C
    is seen at once rather than after the model pass in progress (a call into TensorFlow cannot
    be interrupted, and one 704 px pass takes 2-3 s on a laptop CPU)."""
    if threading.current_thread() is not threading.main_thread():
        return function(*args)  # signals only reach the main thread
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = function(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=run, name="vesselseg-model-call", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.1)
    except KeyboardInterrupt:
        MODEL_CALL_ABANDONED.set()
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def resolve_inference_precision(precision: str | None, backend: str = "keras") -> str | None:
    """"auto" -> on a CPU-only machine, "bfloat16" where the processor has bf16 units and
    "float32" where it has not (bfloat16 is then emulated: 1.6x slower than float32, measured
    on an AVX2-only EPYC); with a GPU, None (as trained). Other values unchanged."""
    if precision != "auto":
        return precision
    if backend != "keras":  # exports run float32; no TensorFlow import for them
        return None
    from .devices import cpu_has_bf16, gpus

    if gpus():
        return None
    return "bfloat16" if cpu_has_bf16() else "float32"


def load_photo(path: str | Path) -> tuple[np.ndarray, None]:
    return read_image(path), None


ACCEPTED_INPUTS = ("an HxW, HxWx1, HxWx3 or HxWx4 array of uint8, uint16 (full range), "
                   "another integer type (8- or 16-bit values) or floats in [0, 1]; a PIL "
                   "image; an image file path; or a list / NxHxWxC array of these")


def _is_batch(image) -> bool:
    if isinstance(image, (list, tuple)):
        return True
    return isinstance(image, np.ndarray) and image.ndim == 4


def as_photo(image) -> np.ndarray:
    """One photo in any accepted form (Segmenter.predict) as HxWx3 RGB uint8. Files and PIL
    images are converted as `eval` reads them (a 16-bit file is stretched by its maximum, as
    sensors often fill only 10-14 bits); arrays follow scikit-image's ranges."""
    if isinstance(image, (str, Path)):
        return read_image(image)
    if _is_pil_image(image):
        from .io import pil_to_array

        image = pil_to_array(image)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"cannot segment a {type(image).__name__}; give {ACCEPTED_INPUTS}")
    if image.size == 0:
        raise ValueError(f"cannot segment an empty array (shape {image.shape}); give "
                         f"{ACCEPTED_INPUTS}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ValueError(f"cannot segment an array of shape {image.shape}; give "
                         f"{ACCEPTED_INPUTS}")
    if image.dtype == bool or not (np.issubdtype(image.dtype, np.integer)
                                   or np.issubdtype(image.dtype, np.floating)):
        raise TypeError(f"cannot segment an array of dtype {image.dtype}; give "
                        f"{ACCEPTED_INPUTS}")
    if np.issubdtype(image.dtype, np.floating):
        if not np.all(np.isfinite(image)):
            raise ValueError("the image holds NaN or infinite values; give floats in [0, 1]")
        low, high = float(image.min()), float(image.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(f"float images must hold values in [0, 1] (scikit-image's "
                             f"convention); this one spans [{low:g}, {high:g}]: divide by its "
                             f"maximum, or pass the integer array")
        image = np.rint(image.astype(np.float64) * 255.0).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = _integers_to_uint8(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    elif image.shape[2] == 4:
        from .io import composite_on_black

        image = composite_on_black(image)
    return np.ascontiguousarray(image)


def _integers_to_uint8(image: np.ndarray) -> np.ndarray:
    """uint16 spans the full 16-bit range (scikit-image's convention: 65535 is white); other
    integer types are read by their values: up to 255 as 8-bit, up to 65535 as 16-bit."""
    low, high = int(image.min()), int(image.max())
    if low < 0:
        raise ValueError(f"integer images must not be negative (dtype {image.dtype}, minimum "
                         f"{low})")
    if image.dtype != np.uint16 and high <= 255:
        return image.astype(np.uint8)
    if high > 65535:
        raise ValueError(f"integer values up to {high} (dtype {image.dtype}) are neither 8- "
                         f"nor 16-bit; scale the photo to uint8, uint16 or floats in [0, 1]")
    return np.rint(image.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)


def _is_pil_image(image) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        return False
    return isinstance(image, Image.Image)
