"""The image transformations shared by preprocessing (training data) and inference (any photo).

`to_model_input` and `to_native` are exact inverses in geometry: crop to the FOV box, resize to
the model size, and back. Using one pair everywhere keeps training and inference consistent.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .config import PreprocessConfig
from .errors import InputError
from .io import MAX_ASPECT


@dataclass(frozen=True)
class Geometry:
    """Where the model input came from in the native photo."""

    native_height: int
    native_width: int
    x0: int
    y0: int
    x1: int
    y1: int


def crop_box(fov: np.ndarray, crop_to_fov: bool, margin: float = 0.02) -> Geometry:
    """A square box around the FOV with a small margin (or the full frame).

    Square, so that resizing never changes the aspect ratio (vessels keep their shape); where the
    FOV is cut by the frame (HRF), the box reaches outside the photo and is padded with black.
    The padded square costs the square of the photo's long side, so a photo more elongated than
    MAX_ASPECT:1 is refused (InputError): memory stays within a few times the photo's pixels.
    """
    height, width = fov.shape
    if not crop_to_fov or not fov.any():
        return Geometry(height, width, 0, 0, width, height)
    ratio = max(height, width) / max(1, min(height, width))
    if ratio > MAX_ASPECT:
        raise InputError(f"a {width}x{height} image (aspect ratio {ratio:.1f}:1) is refused: "
                         f"fundus photos are roughly square (at most {MAX_ASPECT:g}:1), and its "
                         f"square FOV crop would need up to {max(height, width)} pixels a side")
    rows = np.flatnonzero(fov.any(axis=1))
    cols = np.flatnonzero(fov.any(axis=0))
    box_h, box_w = int(rows[-1]) + 1 - int(rows[0]), int(cols[-1]) + 1 - int(cols[0])
    side = round(max(box_h, box_w) * (1 + 2 * margin))
    y0 = (int(rows[0]) + int(rows[-1]) + 1 - side) // 2
    x0 = (int(cols[0]) + int(cols[-1]) + 1 - side) // 2
    return Geometry(height, width, x0, y0, x0 + side, y0 + side)


def crop(array: np.ndarray, box: Geometry) -> np.ndarray:
    """The box's pixels; parts of the box outside the photo are zero (black / background)."""
    height, width = array.shape[:2]
    top, left = max(0, -box.y0), max(0, -box.x0)
    bottom, right = max(0, box.y1 - height), max(0, box.x1 - width)
    inner = array[max(0, box.y0):min(height, box.y1), max(0, box.x0):min(width, box.x1)]
    if top or left or bottom or right:
        padding = [(top, bottom), (left, right)] + [(0, 0)] * (array.ndim - 2)
        inner = np.pad(inner, padding)
    return np.ascontiguousarray(inner)


def resize(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area interpolation when shrinking (no aliasing), linear when enlarging."""
    shrinking = width * height < array.shape[0] * array.shape[1]
    return cv2.resize(array, (width, height),
                      interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def enhance(image: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Optional contrast enhancement of an RGB uint8 image (CLAHE on luminance or green); for
    green CLAHE an HxW image is taken to be the green channel already."""
    if config.enhancement == "none":
        return image
    clahe = cv2.createCLAHE(clipLimit=config.clahe_clip,
                            tileGridSize=(config.clahe_tiles, config.clahe_tiles))
    if config.enhancement == "green_clahe":
        green = clahe.apply(np.ascontiguousarray(image if image.ndim == 2 else image[..., 1]))
        return np.repeat(green[..., None], 3, axis=2)
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    lab[..., 0] = clahe.apply(np.ascontiguousarray(lab[..., 0]))
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def model_fov(fov: np.ndarray, config: PreprocessConfig, size: int | None = None
              ) -> tuple[np.ndarray, Geometry]:
    """(model-size FOV, crop box) of a native FOV: the geometry of `to_model_input` alone."""
    box = crop_box(fov, config.crop_to_fov)
    size = size or config.size
    return resize_mask(crop(fov, box), size, size), box


def to_model_input(image: np.ndarray, fov: np.ndarray, config: PreprocessConfig,
                   size: int | None = None) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """Crop, resize to size x size and enhance: (model image uint8, model FOV bool, geometry).

    Gray inputs (green CLAHE) crop and resize the green channel alone: the same pixels as
    resizing all three and keeping green, for a third of the work.
    """
    from .tiling import check_working_side

    size = check_working_side(size or config.size)
    fov_small, box = model_fov(fov, config, size)
    source = image[..., 1] if config.gray else image
    resized = resize(crop(source, box), size, size)
    # black outside the FOV, as in training
    inside = fov_small.astype(np.uint8)
    resized = resized * (inside if resized.ndim == 2 else inside[..., None])
    return enhance(resized, config), fov_small, box


def resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize a boolean mask by area coverage (a pixel is in when at least half covered)."""
    scaled = resize(mask.astype(np.float32), width, height)
    return scaled >= 0.5


def mask_to_model(mask: np.ndarray, box: Geometry, size: int) -> np.ndarray:
    return resize_mask(crop(mask, box), size, size)


def coverage_to_model(mask: np.ndarray, box: Geometry, size: int) -> np.ndarray:
    """How much of each model pixel the mask covers, as uint8 0-255 (area resampling).

    Shrinking a photo makes a 1-2 px capillary a fraction of a pixel wide: a binary mask keeps it
    only where it happens to cover half a pixel (on CHASE_DB1 a third of the capillary pixels
    vanish, on HRF nearly all). The coverage keeps it as a faint line; `>= 128` gives back the
    binary mask of `mask_to_model` exactly.
    """
    coverage = resize(crop(mask, box).astype(np.float32), size, size)
    return np.rint(np.clip(coverage, 0.0, 1.0) * 255.0).astype(np.uint8)


def to_native(probability: np.ndarray, box: Geometry) -> np.ndarray:
    """Map a model-size probability map back onto the native photo (zero outside the crop)."""
    native = np.zeros((box.native_height, box.native_width), dtype=np.float32)
    patch = cv2.resize(probability.astype(np.float32), (box.x1 - box.x0, box.y1 - box.y0),
                       interpolation=cv2.INTER_LINEAR)
    y0, x0 = max(0, box.y0), max(0, box.x0)
    y1, x1 = min(box.native_height, box.y1), min(box.native_width, box.x1)
    native[y0:y1, x0:x1] = patch[y0 - box.y0:y1 - box.y0, x0 - box.x0:x1 - box.x0]
    return native
