"""Model-input geometry: crop box, to_model_input / to_native round trip, masks, enhancement."""
from __future__ import annotations

import numpy as np
import pytest

from vesselseg.config import PreprocessConfig
from vesselseg.datasets import generate_fundus
from vesselseg.transforms import (
    Geometry,
    coverage_to_model,
    crop,
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


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


@pytest.mark.parametrize("margin", [0.0, 0.02, 0.1])
def test_crop_box_is_a_square_around_the_fov(margin):
    fov = np.zeros((200, 300), bool)
    fov[50:150, 100:220] = True  # 120 wide, 100 high
    box = crop_box(fov, crop_to_fov=True, margin=margin)
    assert (box.native_height, box.native_width) == (200, 300)
    side = box.x1 - box.x0
    assert box.y1 - box.y0 == side == round(120 * (1 + 2 * margin))  # square: no distortion
    assert box.x0 <= 100 and box.y0 <= 50 and box.x1 >= 220 and box.y1 >= 150
    assert abs((box.x0 + box.x1) / 2 - 160) <= 1 and abs((box.y0 + box.y1) / 2 - 100) <= 1
    if margin == 0:
        assert box == Geometry(200, 300, 100, 40, 220, 160)


def test_crop_box_reaches_outside_a_frame_that_cuts_the_fov():
    fov = disc(100, 160, 80, 50, 58)  # cut at top and bottom, as in HRF
    box = crop_box(fov, crop_to_fov=True)
    assert box.y0 < 0 and box.y1 > 100 and 0 < box.x0 < box.x1 < 160
    image = np.full((100, 160, 3), 200, np.uint8)
    patch = crop(image, box)
    side = box.x1 - box.x0
    assert patch.shape == (side, side, 3) and patch.flags["C_CONTIGUOUS"]
    assert not patch[:-box.y0].any() and not patch[100 - box.y0:].any()  # padded with black
    assert (patch[-box.y0:100 - box.y0] == 200).all()
    back = to_native(np.ones((64, 64), np.float32), box)
    assert back.shape == (100, 160)
    assert (back[:, box.x0:box.x1] == 1).all() and not back[:, :box.x0].any()


def test_crop_inside_the_frame_is_a_plain_slice():
    image = np.arange(20 * 30).reshape(20, 30)
    box = Geometry(20, 30, 5, 2, 15, 12)
    np.testing.assert_array_equal(crop(image, box), image[2:12, 5:15])


@pytest.mark.parametrize("crop_to_fov", [False, True])
def test_crop_box_full_frame(crop_to_fov):
    fov = np.zeros((40, 60), bool)
    if not crop_to_fov:
        fov[10:20, 10:20] = True
    # no cropping asked, or an empty FOV: the whole frame
    assert crop_box(fov, crop_to_fov=crop_to_fov) == Geometry(40, 60, 0, 0, 60, 40)


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
    x0, y0, x1, y1 = bounding_box(fov)
    assert box.x0 < x0 and box.x1 > x1 and box.y0 < y0 and box.y1 > y1
    assert box.x1 - box.x0 == box.y1 - box.y0
    explicit, _, _ = to_model_input(image, fov, config, size=64)
    assert explicit.shape == (64, 64, 3)


def test_no_crop_resizes_the_whole_frame():
    image, _, fov = wide_fundus()
    _, _, box = to_model_input(image, fov, PreprocessConfig(size=64, crop_to_fov=False))
    assert box == Geometry(300, 340, 0, 0, 340, 300)


@pytest.mark.parametrize("crop_to_fov", [True, False])
def test_native_map_survives_round_trip(crop_to_fov):
    """A smooth native-size map, taken to model size and back, is recovered inside the crop."""
    image, _, fov = wide_fundus()
    config = PreprocessConfig(size=128, crop_to_fov=crop_to_fov)
    _, _, box = to_model_input(image, fov, config)
    yy, xx = np.mgrid[0:300, 0:340].astype(np.float32)
    native_map = 0.5 + 0.4 * np.sin(xx / 23.0) * np.cos(yy / 31.0)
    model_map = resize(crop(native_map, box), 128, 128)
    back = to_native(model_map, box)
    assert back.shape == (300, 340) and back.dtype == np.float32
    inside = np.zeros((300, 340), bool)
    inside[max(0, box.y0):box.y1, max(0, box.x0):box.x1] = True
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


def test_coverage_thresholded_at_half_is_the_binary_mask():
    image, vessels, fov = wide_fundus(3)
    _, _, box = to_model_input(image, fov, PreprocessConfig(size=256))
    coverage = coverage_to_model(vessels, box, 256)
    assert coverage.dtype == np.uint8
    np.testing.assert_array_equal(coverage >= 128, mask_to_model(vessels, box, 256))
    assert ((coverage > 0) & (coverage < 255)).any()  # vessel edges are partly covered


def test_coverage_keeps_a_line_the_binary_mask_loses():
    """A 1-px line shrunk 4x covers a quarter of each pixel it crosses: the binary mask drops
    it, the coverage keeps it at that strength."""
    mask = np.zeros((64, 64), bool)
    mask[:, 22] = True  # model column 5 covers native columns 20-23
    box = Geometry(64, 64, 0, 0, 64, 64)
    assert not mask_to_model(mask, box, 16).any()
    coverage = coverage_to_model(mask, box, 16)
    assert set(np.unique(coverage[:, 5])) == {64}  # 0.25 x 255, rounded
    assert not np.delete(coverage, 5, axis=1).any()


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


@pytest.mark.parametrize("crop_to_fov, size, cut", [(True, 200, False), (False, 200, False),
                                                    (True, 512, False), (True, 200, True)])
def test_gray_input_resizes_green_alone_to_the_same_pixels(crop_to_fov, size, cut):
    """to_model_input's green-only path equals resizing RGB, masking and keeping green:
    shrinking and enlarging, and with a FOV cut by the frame (the crop box padded)."""
    image, _, fov = wide_fundus(3)
    if cut:  # a disc wider than the frame, as in HRF
        fov = disc(300, 340, 170, 150, 165)
    config = PreprocessConfig(enhancement="green_clahe", crop_to_fov=crop_to_fov)
    fast, fast_fov, box = to_model_input(image, fov, config, size)
    fov_small = resize_mask(crop(fov, box), size, size)
    full = resize(crop(image, box), size, size) * fov_small[..., None].astype(np.uint8)
    assert np.array_equal(fast, enhance(full, config))
    assert np.array_equal(fast_fov, fov_small) and fast.shape == (size, size, 3)


def test_elongated_image_is_refused_before_its_square_crop_is_made():
    """Issue #36: an 8x20000 photo cost 2 GB (its FOV crop was padded to 20800x20800).
    Memory must stay bounded by the photo's pixels: the crop is refused, not allocated."""
    import tracemalloc

    from vesselseg.errors import InputError

    image = np.full((8, 2000, 3), 120, np.uint8)
    fov = np.ones((8, 2000), bool)
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match=r"2000x8 image \(aspect ratio 250.0:1\)"):
            to_model_input(image, fov, PreprocessConfig(size=64))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * image.nbytes  # the padded square alone would be 12,000,000 bytes
    # without the FOV crop (the whole frame is resized) nothing is padded: accepted
    model_image, _, _ = to_model_input(image, fov, PreprocessConfig(size=64, crop_to_fov=False))
    assert model_image.shape[:2] == (64, 64)


def test_four_to_one_image_is_accepted_and_costs_a_few_times_its_pixels():
    import tracemalloc

    image = np.full((64, 256, 3), 120, np.uint8)
    fov = np.ones((64, 256), bool)
    tracemalloc.start()
    try:
        model_image, _, box = to_model_input(image, fov, PreprocessConfig(size=64))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert model_image.shape[:2] == (64, 64) and box.x1 - box.x0 > 256
    assert peak < 12 * image.nbytes
