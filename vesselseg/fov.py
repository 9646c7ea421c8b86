"""Field-of-view (FOV) estimation for photos that come without an official FOV mask.

The FOV of a fundus photo is the bright disc surrounded by near-black background. A threshold on
the red+green brightness relative to the darkest border, closed, hole-filled and reduced to the
largest component finds it; metrics are only honest inside it.
"""
from __future__ import annotations

import cv2
import numpy as np

#: The border counts as a dark surround only when it is at most this fraction of the FOV's
#: brightness (real fundus surrounds measure 0-1 % on DRIVE, CHASE_DB1 and HRF).
DARK_SURROUND_RATIO = 0.25


def estimate_fov(image: np.ndarray, erode_px: int | None = None) -> np.ndarray:
    """Boolean FOV mask of an RGB uint8 fundus photo (same height and width)."""
    if image.ndim != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {image.shape}")
    height, width = image.shape[:2]
    # Red is the brightest channel inside the FOV and near zero outside; the max of red/green is
    # robust for red-free or unusual cameras.
    brightness = np.maximum(image[..., 0], image[..., 1]).astype(np.uint8)
    small_scale = 512.0 / max(height, width)
    if small_scale < 1.0:
        small = cv2.resize(brightness, (max(8, round(width * small_scale)),
                                        max(8, round(height * small_scale))),
                           interpolation=cv2.INTER_AREA)
    else:
        small = brightness
    small = cv2.medianBlur(small, 5)
    border = np.concatenate([small[0], small[-1], small[:, 0], small[:, -1]])
    background = float(np.percentile(border, 10))
    foreground = float(np.percentile(small, 90))
    if foreground - background < 10 or background > DARK_SURROUND_RATIO * foreground:
        # No dark surround (e.g. a photo cropped inside its FOV): the whole frame is the FOV.
        # Without the ratio test the threshold, taken relative to a bright border, would cut
        # the darker parts of the retina (vignetting, vessels) out of the FOV.
        return np.ones((height, width), dtype=bool)
    threshold = background + 0.15 * (foreground - background)
    mask = (small > threshold).astype(np.uint8)
    mask = _largest_component(mask)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    mask = _fill_holes(mask)
    if mask.shape != (height, width):
        mask = cv2.resize(mask * 255, (width, height), interpolation=cv2.INTER_LINEAR) >= 128
        mask = mask.astype(np.uint8)
    if erode_px:
        mask = cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE,
                                                         (2 * erode_px + 1, 2 * erode_px + 1)))
    if mask.sum() < 0.05 * height * width:
        return np.ones((height, width), dtype=bool)
    return mask.astype(bool)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return mask
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return (labels == largest).astype(np.uint8)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1)
    flood = padded.copy()
    cv2.floodFill(flood, None, (0, 0), 1)
    holes = (flood == 0)
    padded[holes] = 1
    return padded[1:-1, 1:-1]


def fov_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)
