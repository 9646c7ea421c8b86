"""Model-input geometry: crop box, to_model_input / to_native round trip, masks, enhancement."""
from __future__ import annotations

import numpy as np
import pytest

from vesselseg.config import PreprocessConfig
from vesselseg.datasets import generate_fundus
from vesselseg.transforms import (
    Geometry,
    crop_box,
    enhance,
    mask_to_model,
    resize,
    resize_mask,
    to_model_input,
    to_native,
)


def disc(height: int, width: int, cx: float, cy: float, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return np.hypot(xx - cx, yy - cy) <= radius


def wide_fundus(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 256 px synthetic fundus in a 300x340 black frame (not square, off-centre)."""
    sample = generate_fundus(seed, 256)
    image = np.zeros((300, 340, 3), np.uint8)
    vessels = np.zeros((300, 340), bool)
    fov = np.zeros((300, 340), bool)
    image[30:286, 60:316], vessels[30:286, 60:316], fov[30:286, 60:316] = \
        sample.image, sample.vessels, sample.fov
    return image, vessels, fov


# --------------------------------------------------------------------------- crop_box


def test_crop_box_is_fov_bounding_box_with_margin():
    fov = np.zeros((200, 300), bool)
    fov[50:150, 100:220] = True
    box = crop_box(fov, crop_to_fov=True, margin=0.0)
    assert box == Geometry(200, 300, 100, 50, 220, 150)
    box = crop_box(fov, crop_to_fov=True, margin=0.02)
    assert box == Geometry(200, 300, 100 - 6, 50 - 4, 220 + 6, 150 + 4)


def test_crop_box_is_clipped_to_the_frame():
    fov = disc(100, 120, 60, 50, 55)  # touches top and bottom
    box = crop_box(fov, crop_to_fov=True)
    assert box.y0 == 0 and box.y1 == 100
    assert 0 < box.x0 < box.x1 < 120


@pytest.mark.parametrize("crop", [False, True])
def test_crop_box_full_frame(crop):
    fov = np.zeros((40, 60), bool)
    if not crop:
        fov[10:20, 10:20] = True
    # no cropping asked, or an empty FOV: the whole frame
    assert crop_box(fov, crop_to_fov=crop) == Geometry(40, 60, 0, 0, 60, 40)


# --------------------------------------------------------------------------- model input


def test_to_model_input_shapes_and_black_outside_fov():
    image, _, fov = wide_fundus()
    config = PreprocessConfig(size=128)
    model_image, model_fov, box = to_model_input(image, fov, config)
    assert model_image.shape == (128, 128, 3) and model_image.dtype == np.uint8
    assert model_fov.shape == (128, 128) and model_fov.dtype == bool
    assert model_image[~model_fov].max() == 0
    assert model_fov.mean() == pytest.approx(np.pi / 4 * (1 / 1.04) ** 2, abs=0.05)
    assert (box.native_height, box.native_width) == (300, 340)
    rows, cols = np.flatnonzero(fov.any(axis=1)), np.flatnonzero(fov.any(axis=0))
    assert box.x0 < cols[0] and box.x1 > cols[-1] + 1 and box.y0 < rows[0] and box.y1 > rows[-1]
    explicit, _, _ = to_model_input(image, fov, config, size=64)
    assert explicit.shape == (64, 64, 3)


def test_no_crop_resizes_the_whole_frame():
    image, _, fov = wide_fundus()
    _, _, box = to_model_input(image, fov, PreprocessConfig(size=64, crop_to_fov=False))
    assert box == Geometry(300, 340, 0, 0, 340, 300)


@pytest.mark.parametrize("crop", [True, False])
def test_native_map_survives_round_trip(crop):
    """A smooth native-size map, taken to model size and back, is recovered inside the crop."""
    image, _, fov = wide_fundus()
    config = PreprocessConfig(size=128, crop_to_fov=crop)
    _, _, box = to_model_input(image, fov, config)
    yy, xx = np.mgrid[0:300, 0:340].astype(np.float32)
    native_map = 0.5 + 0.4 * np.sin(xx / 23.0) * np.cos(yy / 31.0)
    model_map = resize(native_map[box.y0:box.y1, box.x0:box.x1], 128, 128)
    back = to_native(model_map, box)
    assert back.shape == (300, 340) and back.dtype == np.float32
    inside = np.zeros((300, 340), bool)
    inside[box.y0:box.y1, box.x0:box.x1] = True
    assert np.abs(back - native_map)[inside].mean() < 0.01
    assert np.abs(back - native_map)[inside].max() < 0.08
    assert not back[~inside].any()  # zero outside the crop


def test_vessel_mask_survives_round_trip():
    image, vessels, fov = wide_fundus(2)
    config = PreprocessConfig(size=256)
    _, model_fov, box = to_model_input(image, fov, config)
    model_vessels = mask_to_model(vessels, box, config.size) & model_fov
    back = to_native(model_vessels.astype(np.float32), box) >= 0.5
    assert back.shape == vessels.shape
    iou = (back & vessels).sum() / (back | vessels).sum()
    assert iou > 0.6  # thin vessels lose a little at the edges, but stay in place
    back_fov = to_native(model_fov.astype(np.float32), box) >= 0.5
    assert (back_fov & fov).sum() / (back_fov | fov).sum() > 0.97


def test_to_native_of_constant_map():
    box = Geometry(50, 70, 10, 5, 60, 45)
    native = to_native(np.full((32, 32), 0.75, np.float32), box)
    assert native.shape == (50, 70)
    assert np.allclose(native[5:45, 10:60], 0.75)
    assert native.sum() == pytest.approx(0.75 * 40 * 50)


def test_resize_mask_keeps_half_covered_pixels():
    mask = np.zeros((8, 8), bool)
    mask[:, :4] = True
    np.testing.assert_array_equal(resize_mask(mask, 4, 4)[:, :2], True)
    np.testing.assert_array_equal(resize_mask(mask, 4, 4)[:, 2:], False)
    assert resize_mask(mask, 16, 16).dtype == bool


# --------------------------------------------------------------------------- enhancement


def test_enhancement_variants():
    image, _, _ = wide_fundus()
    assert enhance(image, PreprocessConfig(enhancement="none")) is image
    clahe = enhance(image, PreprocessConfig(enhancement="clahe"))
    assert clahe.shape == image.shape and clahe.dtype == np.uint8
    assert not np.array_equal(clahe, image)
    green = enhance(image, PreprocessConfig(enhancement="green_clahe"))
    assert green.shape == image.shape
    assert np.array_equal(green[..., 0], green[..., 1]) and np.array_equal(green[..., 1],
                                                                            green[..., 2])
