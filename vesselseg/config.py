"""Dataclass configs that are saved next to every output and can be reloaded exactly.

Loading validates: an unknown key or a value of the wrong type is a ConfigError naming the key, so a
typo in a config file never silently falls back to a default.

Over 350 lines: the configs and their validation (types, ranges, paths) are one contract that
every command loads runs through; splitting them would split that contract.
"""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError
from .io import is_plain_name, write_text_atomic

ENHANCEMENTS = ("none", "clahe", "green_clahe")
#: Largest model input / working side (an 8192x8192 float image is 805 MB; tiling's limit too).
MAX_SIZE = 8192
#: Widest and deepest networks accepted (the shipped model: 32 filters, depth 4): far beyond
#: them a typo (--base-filters 1000000) asks for terabytes of weights.
MAX_BASE_FILTERS, MAX_DEPTH = 512, 12
#: Most offline augmented copies of a training image (--augment 1000000000 filled the memory).
MAX_AUGMENT = 100
#: Most CLAHE tiles a side (OpenCV allocates a histogram per tile).
MAX_CLAHE_TILES = 256
#: Run names become folder names: short enough for any file system, with the timestamp.
MAX_RUN_NAME = 200
PRECISIONS = ("auto", "float32", "bfloat16", "mixed_float16")
LR_SCHEDULES = ("plateau", "cosine")
KEEP_CHOICES = ("best", "last")  # which epoch's model a run keeps


def _option(default, help: str, choices: tuple | None = None, **kwargs):
    """A config field with the help text (and choices) its command-line flag shows: the flags
    of `train` are made from these fields (`cli.add_config_arguments`), one source of truth."""
    metadata = {"help": help, **({"choices": choices} if choices else {})}
    if callable(default) and not isinstance(default, (int, float, str, bool)):
        return field(default_factory=default, metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)


@dataclass
class PreprocessConfig:
    """How raw photos become model inputs; training, test and eval all apply the same one."""

    size: int = _option(512, "side of the square model inputs (a multiple of 32)")
    enhancement: str = _option("none", "contrast enhancement: none, clahe (luminance) or "
                                       "green_clahe (green channel, gray)", choices=ENHANCEMENTS)
    crop_to_fov: bool = _option(True, "crop to the FOV's bounding box before resizing "
                                      "(--no-crop-to-fov resizes the whole frame)")
    clahe_clip: float = _option(2.0, "CLAHE clip limit")
    clahe_tiles: int = _option(8, "CLAHE tiles per side")
    val_fraction: float = _option(0.15, "share of training images held out for validation")
    augment: int = _option(0, "offline augmented copies per training image")
    seed: int = _option(0, "seed of the validation split and offline augmentation")

    @property
    def gray(self) -> bool:
        """True when the model images' three channels are one gray channel repeated."""
        return self.enhancement == "green_clahe"

    def __post_init__(self) -> None:
        if self.enhancement not in ENHANCEMENTS:
            raise ConfigError(f"enhancement: {self.enhancement!r} is not one of {ENHANCEMENTS}")
        if self.size < 32 or self.size % 32 or self.size > MAX_SIZE:
            raise ConfigError(f"size: {self.size} must be a multiple of 32 from 32 to {MAX_SIZE}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction: {self.val_fraction} must be in [0, 1)")
        if not 0 <= self.augment <= MAX_AUGMENT:
            raise ConfigError(f"augment: {self.augment} must be from 0 to {MAX_AUGMENT} (copies "
                              f"of every training image, each written to disk)")
        if not 1 <= self.clahe_tiles <= MAX_CLAHE_TILES:
            raise ConfigError(f"clahe_tiles: {self.clahe_tiles} must be from 1 to "
                              f"{MAX_CLAHE_TILES}")
        if not (self.clahe_clip > 0 and math.isfinite(self.clahe_clip)):
            raise ConfigError(f"clahe_clip: {self.clahe_clip} must be positive")
        _check_seed(self.seed)


@dataclass
class AugmentConfig:
    """Online augmentation, applied identically to image, vessels and FOV."""

    flips: bool = True
    rot90: bool = True
    rotation_degrees: float = 15.0
    scale_range: float = 0.15  # zoom factor in [zoom - r, zoom + r]
    # mean magnification: above 1 trains the model on a larger view of the photo, to match a
    # run's `working_size` above the training size (e.g. 1.125 for 576 with 512 windows)
    zoom: float = 1.0
    pan: bool = False  # a magnified view moves across the photo instead of staying centred
    # side of the training views (0: the stored images' own size). Data preprocessed larger than
    # the window (e.g. --size 704, window 512) gives views that carry the photo's own detail at
    # the working scale; magnifying 512 images with `zoom` only interpolates them.
    window: int = 0
    brightness: float = 0.15
    contrast: float = 0.25
    gamma: float = 0.25
    hue: float = 0.03
    saturation: float = 0.2
    blur_probability: float = 0.0

    def __post_init__(self) -> None:
        if not self.zoom > 0:
            raise ConfigError(f"zoom: {self.zoom} must be positive (1: no magnification)")
        if not 0.0 <= self.scale_range < self.zoom:
            raise ConfigError(f"scale_range: {self.scale_range} must be in [0, zoom = "
                              f"{self.zoom}) so every zoom factor stays positive")
        _check_ranges(self, {"rotation_degrees": (0, 180), "brightness": (0, 1),
                             "contrast": (0, 1), "gamma": (0, 1), "hue": (0, 0.5),
                             "saturation": (0, 1), "blur_probability": (0, 1)})
        if self.window < 0 or self.window % 32:
            raise ConfigError(f"window: {self.window} must be 0 (the stored size) or a positive "
                              f"multiple of 32")


@dataclass
class TrainConfig:
    """Everything that determines a training run; saved as config.json in the run folder."""

    data: list[str] = _option(lambda: ["data/preprocessed"],
                              "preprocessed folder(s) from vesselseg.preprocess; several folders "
                              "are trained on together (their train/val splits are merged)")
    run_name: str = _option("unet", "suffix of the run folder's name")
    runs_dir: str = _option("artifacts/runs", "parent folder of run folders")
    architecture: str = _option("unet", "unet, or wnet: two U-Nets in a row, the second "
                                        "correcting the first (LWNet's W-Net; twice the cost)")
    base_filters: int = _option(16, "U-Net width: filters of the first level")
    depth: int = _option(4, "U-Net levels (pooling steps)")
    batch_norm: bool = _option(True, "batch normalisation after every convolution")
    dropout: float = _option(0.0, "spatial dropout rate after each block's first convolution")
    loss: str = _option("dice", "dice, bce, focal, focal_dice, bce_dice, cldice, "
                                "bce_dice_cldice or bce_dice_skeleton")
    focal_alpha: float = _option(0.25, "focal loss: weight of the vessel class")
    focal_gamma: float = _option(2.0, "focal loss: focusing exponent")
    loss_balance: float = _option(0.5, "weight of the first term in combined losses")
    epochs: int = _option(100, "maximum epochs")
    steps_per_epoch: int = _option(0, "batches per epoch (0: one pass over the training images)")
    batch_size: int = _option(4, "images per step")
    learning_rate: float = _option(1e-3, "Adam learning rate")
    lr_schedule: str = _option("plateau", "plateau: halve the rate when validation stalls "
                                          "(ReduceLROnPlateau); cosine: decay to the minimum over "
                                          "the epochs or the budget, whichever ends first",
                               choices=LR_SCHEDULES)
    min_learning_rate: float = _option(1e-5, "lowest learning rate of either schedule")
    plateau_patience: int = _option(8, "epochs without progress before the rate is halved")
    early_stopping_patience: int = _option(25, "epochs without progress before training stops")
    keep: str = _option("best", "which epoch's model the run keeps: best (highest validation "
                                "Dice) or last (for the cosine schedule)", choices=KEEP_CHOICES)
    budget_minutes: float = _option(0.0, "stop before this much wall-clock time is spent "
                                         "(0: no limit)")
    precision: str = _option("auto", "auto: mixed_float16 on a GPU, float32 on a CPU; bfloat16 "
                                     "is faster on CPUs with AMX or AVX512-BF16",
                             choices=PRECISIONS)
    seed: int = _option(0, "seed of weights, shuffling and augmentation")
    cache: bool = _option(True, "keep the decoded training images in memory")
    use_fov_in_loss: bool = _option(True, "count only pixels inside the FOV in the loss")
    soft_labels: bool = _option(False, "train on each pixel's vessel coverage instead of the "
                                       "binary mask (keeps capillaries thinner than a pixel)")
    init_from: str = _option("", "fine-tune: start from a finished run's weights, or "
                                 "'pretrained' for the shipped model")
    working_size: int = _option(0, "side the FOV crop is resized to at test and eval (0: the "
                                   "training size); pair a larger one with augment.zoom")
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    def __post_init__(self) -> None:
        if isinstance(self.data, str):  # config.json files written before `data` was a list
            self.data = [part.strip() for part in self.data.split(",") if part.strip()]
        self.data = [str(folder) for folder in self.data]
        if not self.data:
            raise ConfigError("data: give at least one preprocessed folder")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision: {self.precision!r} is not one of {PRECISIONS}")
        if self.keep not in KEEP_CHOICES:
            raise ConfigError(f"keep: {self.keep!r} is not one of {', '.join(KEEP_CHOICES)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule: {self.lr_schedule!r} is not one of "
                              f"{', '.join(LR_SCHEDULES)}")
        if self.working_size and (self.working_size < self.preprocess.size
                                  or self.working_size % 32):
            raise ConfigError(f"working_size: {self.working_size} must be 0 or a multiple of 32 "
                              f"of at least preprocess.size ({self.preprocess.size})")
        for name in ("epochs", "batch_size", "base_filters", "depth", "plateau_patience",
                     "early_stopping_patience"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1, got {getattr(self, name)}")
        for name, most in (("base_filters", MAX_BASE_FILTERS), ("depth", MAX_DEPTH),
                           ("working_size", MAX_SIZE)):
            if getattr(self, name) > most:
                raise ConfigError(f"{name}: {getattr(self, name)} is more than the {most} "
                                  f"accepted")
        _check_seed(self.seed)
        _check_ranges(self, {"steps_per_epoch": (0, None), "budget_minutes": (0, None),
                             "dropout": (0, 0.95), "focal_alpha": (0, 1), "focal_gamma": (0, None),
                             "loss_balance": (0, 1)})
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ConfigError(f"learning_rate: {self.learning_rate} must be a positive number")
        if not 0 < self.min_learning_rate <= self.learning_rate:
            raise ConfigError(f"min_learning_rate: {self.min_learning_rate} must be positive and "
                              f"at most learning_rate ({self.learning_rate})")
        if (not is_plain_name(self.run_name) or len(self.run_name) > MAX_RUN_NAME
                or not self.run_name.isprintable()):
            raise ConfigError(f"run_name: {self.run_name[:MAX_RUN_NAME + 10]!r} must be a plain "
                              f"name (no folder separators or control characters, at most "
                              f"{MAX_RUN_NAME} characters): it names a folder inside runs_dir")


def _check_ranges(config, ranges: dict[str, tuple[float | None, float | None]]) -> None:
    """Raise a ConfigError naming the key when a number is not finite or outside [low, high]."""
    for name, (low, high) in ranges.items():
        value = getattr(config, name)
        if (not math.isfinite(value) or (low is not None and value < low)
                or (high is not None and value > high)):
            bounds = f"[{low}, {high}]" if high is not None else f">= {low}"
            raise ConfigError(f"{name}: {value} must be {'in ' if high is not None else ''}"
                              f"{bounds}")


def _check_seed(seed: int) -> None:
    """NumPy and TensorFlow take seeds in [0, 2**32): -1 or 2**70 were tracebacks mid-run."""
    if not 0 <= seed < 2**32:
        raise ConfigError(f"seed: {seed} must be in [0, {2**32 - 1}]")


T = TypeVar("T")


def _check_type(key: str, value: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            if option is type(None) and value is None:
                return None
            try:
                return _check_type(key, value, option)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} is not a valid {annotation}")
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return from_dict(annotation, value, prefix=f"{key}.")
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if origin is list:
        if isinstance(value, str):  # a comma-joined list, as older config files hold
            return value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
        return list(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(f"{prefix}{key}: unknown key "
                              f"(valid keys: {', '.join(sorted(names))})")
    values = {key: _check_type(prefix + key, value, hints[key]) for key, value in data.items()}
    try:
        return cls(**values)
    except ConfigError as exc:
        # __post_init__ names the field only; add the section so a nested key is named in full.
        raise ConfigError(f"{prefix}{exc}") from None


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_config(config: Any, path: str | Path) -> Path:
    return write_text_atomic(path, json.dumps(to_dict(config), indent=2, sort_keys=True) + "\n")


#: The recipes shipped with the package, found by name (`--config finetune`).
RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


def recipe_names(folders: tuple[Path, ...] = (RECIPES_DIR,)) -> list[str]:
    return sorted({path.stem for folder in folders if folder.is_dir()
                   for path in folder.glob("*.json")})


def find_recipe(name: str | Path, folders: tuple[Path, ...] = (RECIPES_DIR,)) -> Path:
    """A recipe file by path, or by name in `folders` (the package's recipes by default), from
    any working directory."""
    path = Path(name)
    if path.suffix == ".json" or path.exists() or len(path.parts) > 1:
        return path
    for folder in folders:
        if (folder / f"{name}.json").exists():
            return folder / f"{name}.json"
    raise ConfigError(f"config: no recipe named {str(name)!r} (known: "
                      f"{', '.join(recipe_names(folders))}) and no such file")


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:300]


def load_config(cls: type[T], path: str | Path) -> T:
    """Reload a config saved with save_config (or written by hand).

    The file must be UTF-8 JSON (a UTF-8 byte-order mark is accepted); UTF-16 or other bytes
    are a ConfigError naming the file, as is anything that is not a JSON object."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a config file") from None
    save_as = "save it as UTF-8 text (JSON config files are UTF-8)"
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError(f"{path}: saved as UTF-16 text; {save_as}")
    if b"\x00" in raw:
        raise ConfigError(f"{path}: holds NUL bytes (UTF-16 text or binary data); {save_as}")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at position "
                          f"{exc.start}); {save_as}") from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # also a 5000-digit number, [[[... 100000 deep
        raise ConfigError(f"{path}: not valid JSON ({_first_line(exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top level")
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
