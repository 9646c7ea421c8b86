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
    # the former implementation (the whole photo in float32) as the byte-exact reference
    reference = image.astype(np.float32).copy()
    reference[mask] = 0.4 * reference[mask] + 0.6 * np.array((0, 255, 80), dtype=np.float32)
    assert np.array_equal(out, reference.clip(0, 255).astype(np.uint8))
    assert np.array_equal(overlay(image, np.zeros((40, 50), bool)), image)


def test_error_overlay_has_one_colour_per_outcome():
    truth = np.array([[1, 1, 0, 0]], bool)
    prediction = np.array([[1, 0, 1, 0]], bool)
    colours = error_overlay(prediction, truth, None)
    assert colours.shape == (1, 4, 3)
    assert len({tuple(c) for c in colours[0]}) == 4
