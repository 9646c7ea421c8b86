"""Pictures: the eval overlay and the error overlay."""
from __future__ import annotations

import numpy as np

from vesselseg.plots import error_overlay, overlay


def test_overlay_blends_only_vessel_pixels():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    mask = rng.random((40, 50)) < 0.1
    out = overlay(image, mask, colour=(0, 255, 80), alpha=0.6)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert np.array_equal(out[~mask], image[~mask])
    expected = (0.4 * image[mask].astype(np.float32) + 0.6 * np.float32([0, 255, 80]))
    assert np.abs(out[mask].astype(int) - expected.astype(int)).max() == 0
    assert np.array_equal(overlay(image, np.zeros((40, 50), bool)), image)


def test_error_overlay_has_one_colour_per_outcome():
    truth = np.array([[1, 1, 0, 0]], bool)
    prediction = np.array([[1, 0, 1, 0]], bool)
    colours = error_overlay(prediction, truth, None)
    assert colours.shape == (1, 4, 3)
    assert len({tuple(c) for c in colours[0]}) == 4
