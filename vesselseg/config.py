"""Dataclass configs that are saved next to every output and can be reloaded exactly.

Loading validates: an unknown key or a value of the wrong type is a ConfigError naming the key, so a
typo in a config file never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError
from .io import write_text_atomic

ENHANCEMENTS = ("none", "clahe", "green_clahe")
PRECISIONS = ("auto", "float32", "bfloat16", "mixed_float16")
LR_SCHEDULES = ("plateau", "cosine")
KEEP_CHOICES = ("best", "last")  # which epoch's model a run keeps


@dataclass
class PreprocessConfig:
    """How raw photos become model inputs; training, test and eval all apply the same one."""

    size: int = 512
    enhancement: str = "none"  # none | clahe (luminance) | green_clahe (green channel, gray)
    crop_to_fov: bool = True  # crop to the FOV's bounding box before resizing
    clahe_clip: float = 2.0
    clahe_tiles: int = 8
    val_fraction: float = 0.15
    augment: int = 0  # offline augmented copies per training image
    seed: int = 0

    @property
    def gray(self) -> bool:
        """True when the model images' three channels are one gray channel repeated."""
        return self.enhancement == "green_clahe"

    def __post_init__(self) -> None:
        if self.enhancement not in ENHANCEMENTS:
            raise ConfigError(f"enhancement: {self.enhancement!r} is not one of {ENHANCEMENTS}")
        if self.size < 32 or self.size % 32:
            raise ConfigError(f"size: {self.size} must be a multiple of 32 (and at least 32)")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction: {self.val_fraction} must be in [0, 1)")
        if self.augment < 0:
            raise ConfigError(f"augment: {self.augment} must be 0 or more")
        if self.clahe_tiles < 1:
            raise ConfigError(f"clahe_tiles: {self.clahe_tiles} must be at least 1")
        if not self.clahe_clip > 0:
            raise ConfigError(f"clahe_clip: {self.clahe_clip} must be positive")


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
        if self.window < 0 or self.window % 32:
            raise ConfigError(f"window: {self.window} must be 0 (the stored size) or a positive "
                              f"multiple of 32")


@dataclass
class TrainConfig:
    """Everything that determines a training run; saved as config.json in the run folder."""

    data: str = "data/preprocessed"
    run_name: str = "unet"
    runs_dir: str = "artifacts/runs"
    architecture: str = "unet"
    base_filters: int = 16
    depth: int = 4
    batch_norm: bool = True
    dropout: float = 0.0
    loss: str = "dice"
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    loss_balance: float = 0.5  # weight of the first term in combined losses
    epochs: int = 100
    steps_per_epoch: int = 0  # 0: one pass over the training images
    batch_size: int = 4
    learning_rate: float = 1e-3
    lr_schedule: str = "plateau"  # plateau | cosine
    min_learning_rate: float = 1e-5
    plateau_patience: int = 8
    early_stopping_patience: int = 25
    keep: str = "best"  # best: highest validation Dice | last: the final epoch (see README)
    budget_minutes: float = 0.0  # stop after this much wall-clock (0: no limit)
    precision: str = "auto"
    seed: int = 0
    cache: bool = True
    use_fov_in_loss: bool = True
    # train on each pixel's annotation coverage instead of the binary mask: capillaries thinner
    # than a model pixel stay in the targets as faint lines (validation stays binary)
    soft_labels: bool = False
    init_from: str = ""  # fine-tune from this run's weights ("pretrained": the shipped model)
    # the size the FOV crop is resized to at test and eval (the model runs on it whole, being
    # fully convolutional); 0: the training size. Pair a larger one with `augment.zoom`.
    working_size: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    def __post_init__(self) -> None:
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
        for name in ("epochs", "batch_size", "base_filters", "depth"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1, got {getattr(self, name)}")


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


def load_config(cls: type[T], path: str | Path) -> T:
    """Reload a config saved with save_config (or written by hand)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file does not exist") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top level")
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
