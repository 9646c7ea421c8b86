"""FOV estimation: matches the official DRIVE masks, finds the synthetic disc, falls back sanely."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from vesselseg.datasets import generate_fundus, read_dataset
from vesselseg.fov import estimate_fov, fov_iou
from vesselseg.io import read_image, read_mask


@pytest.mark.real_data
def test_drive_every_image_matches_official_mask(drive_dir):
    samples = read_dataset("drive", drive_dir).samples
    assert len(samples) == 40
    worst = []
    for sample in samples:
        image = read_image(sample.image)
        official = read_mask(sample.fov, expected_shape=image.shape[:2])
        estimate = estimate_fov(image)
        assert estimate.shape == official.shape and estimate.dtype == bool
        worst.append((fov_iou(estimate, official), sample.id))
    bad = [(round(iou, 4), name) for iou, name in worst if iou < 0.97]
    assert not bad, f"FOV IoU below 0.97: {bad}"


@pytest.mark.parametrize("seed", range(4))
def test_synthetic_fundus(seed):
    sample = generate_fundus(seed, size=256)
    estimate = estimate_fov(sample.image)
    assert fov_iou(estimate, sample.fov) >= 0.97


def test_synthetic_fundus_not_square():
    sample = generate_fundus(3, size=256)
    wide = np.zeros((256, 400, 3), np.uint8)
    wide[:, 72:328] = sample.image  # a disc in a wide black frame, as on most cameras
    truth = np.zeros((256, 400), bool)
    truth[:, 72:328] = sample.fov
    assert fov_iou(estimate_fov(wide), truth) >= 0.97


def test_large_image_is_estimated_at_reduced_scale_then_upsampled():
    sample = generate_fundus(1, size=256)
    big = cv2.resize(sample.image, (1024, 1024), interpolation=cv2.INTER_LINEAR)
    truth = cv2.resize(sample.fov.astype(np.uint8), (1024, 1024),
                       interpolation=cv2.INTER_NEAREST).astype(bool)
    estimate = estimate_fov(big)
    assert estimate.shape == (1024, 1024)
    assert fov_iou(estimate, truth) >= 0.97


def test_no_dark_surround_gives_whole_frame():
    # A photo cropped inside its FOV: vignetting and vessels must not be cut out of the FOV.
    sample = generate_fundus(2, size=256)
    crop = sample.image[56:200, 56:200]
    assert estimate_fov(crop).all()
    rng = np.random.default_rng(0)
    textured = np.clip(150 + rng.normal(0, 20, (120, 160, 3)), 0, 255).astype(np.uint8)
    assert estimate_fov(textured).all()
    assert estimate_fov(np.full((64, 64, 3), 128, np.uint8)).all()


def test_black_image_gives_whole_frame():
    assert estimate_fov(np.zeros((64, 80, 3), np.uint8)).all()


def test_erosion_shrinks_the_fov():
    sample = generate_fundus(0, size=256)
    full, eroded = estimate_fov(sample.image), estimate_fov(sample.image, erode_px=4)
    assert eroded.sum() < full.sum()
    assert not (eroded & ~full).any()


def test_rejects_grayscale_array():
    with pytest.raises(ValueError, match="HxWx3"):
        estimate_fov(np.zeros((32, 32), np.uint8))


def test_fov_iou():
    a = np.zeros((4, 4), bool)
    b = a.copy()
    assert fov_iou(a, b) == 1.0
    a[:2] = True
    b[1:3] = True
    assert fov_iou(a, b) == pytest.approx(4 / 12)
