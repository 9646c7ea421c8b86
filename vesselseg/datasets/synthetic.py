"""A procedural fundus generator with exact vessel masks: the data tests and the demo use when no
real dataset is present. Seeded and deterministic: the same seed gives the same pixels.

A photo has a round field of view with vignetting, an optic disc, a darker fovea, vessel trees that
leave the disc, branch and taper, smooth illumination changes and sensor noise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..io import write_png, write_text_atomic
from .base import ReadResult, register_reader
from .folder import read_folder


@dataclass(frozen=True)
class SyntheticFundus:
    image: np.ndarray  # HxWx3 uint8
    vessels: np.ndarray  # HxW bool
    fov: np.ndarray  # HxW bool


def _grow_tree(rng: np.random.Generator, canvas: np.ndarray, start: tuple[float, float],
               angle: float, width: float, length: float, depth: int, scale: float) -> None:
    """Draw one vessel as a wandering polyline; spawn thinner branches along the way."""
    x, y = start
    step = 6.0 * scale
    travelled = 0.0
    curvature = rng.normal(0.0, 0.02)
    points = [(x, y)]
    while travelled < length and width >= 0.6:
        curvature = 0.8 * curvature + rng.normal(0.0, 0.03)
        angle += curvature
        x += step * math.cos(angle)
        y += step * math.sin(angle)
        travelled += step
        points.append((x, y))
        taper = width * (1.0 - 0.35 * step / max(length, step))
        if len(points) >= 2:
            p0 = (round(points[-2][0] * 4), round(points[-2][1] * 4))
            p1 = (round(x * 4), round(y * 4))
            cv2.line(canvas, p0, p1, 255, max(1, round(width)), lineType=cv2.LINE_AA, shift=2)
        width = taper
        if depth < 4 and rng.random() < 0.07:
            side = rng.choice([-1.0, 1.0])
            _grow_tree(rng, canvas, (x, y), angle + side * rng.uniform(0.4, 1.1),
                       width * rng.uniform(0.55, 0.8), length * rng.uniform(0.35, 0.6),
                       depth + 1, scale)
            width *= 0.85


def generate_fundus(seed: int, size: int = 256) -> SyntheticFundus:
    """One synthetic photo of `size` x `size` pixels, fully determined by `seed`."""
    rng = np.random.default_rng(seed)
    scale = size / 512.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    centre = size / 2.0 + rng.normal(0, size * 0.01, 2)
    radius = size * rng.uniform(0.44, 0.48)
    distance = np.hypot(xx - centre[0], yy - centre[1])
    fov = distance <= radius

    side = rng.choice([-1.0, 1.0])  # left or right eye
    disc = (centre[0] + side * radius * 0.55, centre[1] + rng.normal(0, radius * 0.05))
    fovea = (centre[0] - side * radius * 0.1, centre[1] + rng.normal(0, radius * 0.03))

    vessels_hr = np.zeros((size, size), dtype=np.uint8)
    towards_fovea = math.atan2(fovea[1] - disc[1], fovea[0] - disc[0])
    for offset in (-1.25, 1.25, -0.55, 0.55, math.pi - 0.6, math.pi + 0.6):
        _grow_tree(rng, vessels_hr, disc, towards_fovea + offset + rng.normal(0, 0.15),
                   width=rng.uniform(4.0, 7.0) * scale + 0.6, length=radius * rng.uniform(0.9, 1.4),
                   depth=0, scale=scale)
    vessel_strength = vessels_hr.astype(np.float32) / 255.0
    vessels = (vessel_strength >= 0.5) & fov

    base = np.array(rng.uniform([170, 70, 25], [230, 120, 55]), dtype=np.float32)
    vignetting = np.clip(1.0 - 0.45 * (distance / radius) ** 2.5, 0.0, 1.0)
    gradient_angle = rng.uniform(0, 2 * math.pi)
    illumination = 1.0 + 0.15 * ((xx - centre[0]) * math.cos(gradient_angle)
                                 + (yy - centre[1]) * math.sin(gradient_angle)) / radius
    shading = (vignetting * illumination)[..., None]
    image = base[None, None, :] * shading
    disc_glow = np.exp(-(((xx - disc[0]) ** 2 + (yy - disc[1]) ** 2) / (2 * (radius * 0.09) ** 2)))
    image += disc_glow[..., None] * np.array([60, 90, 60], dtype=np.float32)
    fovea_dip = np.exp(-(((xx - fovea[0]) ** 2 + (yy - fovea[1]) ** 2)
                         / (2 * (radius * 0.12) ** 2)))
    image *= (1.0 - 0.35 * fovea_dip)[..., None]
    contrast = rng.uniform(0.35, 0.6)
    image *= (1.0 - contrast * vessel_strength[..., None] * np.array([0.6, 1.0, 0.8],
                                                                     dtype=np.float32))
    image += rng.normal(0, rng.uniform(2.0, 6.0), image.shape).astype(np.float32)
    image *= fov[..., None]
    image = cv2.GaussianBlur(image, (0, 0), 0.6)
    return SyntheticFundus(np.clip(image, 0, 255).astype(np.uint8), vessels, fov)


def write_synthetic_dataset(out: str | Path, count: int = 12, size: int = 256, seed: int = 0,
                            test_fraction: float = 0.25) -> Path:
    """Write `count` synthetic photos in the `folder` layout (images/, masks/, fov/, split.csv)."""
    out = Path(out)
    test_count = max(1, round(count * test_fraction)) if count > 1 else 0
    rows = []
    for index in range(count):
        sample = generate_fundus(seed * 100_003 + index, size)
        name = f"synthetic_{index:03d}"
        write_png(out / "images" / f"{name}.png", sample.image)
        write_png(out / "masks" / f"{name}.png", sample.vessels)
        write_png(out / "fov" / f"{name}.png", sample.fov)
        rows.append((name, "test" if index >= count - test_count else "train"))
    lines = ["id,split"] + [f"{name},{split}" for name, split in rows]
    write_text_atomic(out / "split.csv", "\n".join(lines) + "\n")
    return out


@register_reader("synthetic", default_source="data/synthetic")
def read_synthetic(source: Path) -> ReadResult:
    """Generate the default synthetic set into `source` when it is not there yet, then read it."""
    if not (source / "split.csv").exists():
        write_synthetic_dataset(source)
    result = read_folder(source)
    for i, sample in enumerate(result.samples):
        result.samples[i] = type(sample)(**{**sample.__dict__, "dataset": "synthetic"})
    return result


