"""Pure sliding-window helpers: windows cover the image, blending is seamless, flips average."""
from __future__ import annotations

import numpy as np
import pytest

from vesselseg.tiling import (
    average_flips,
    blend_weight,
    export_side,
    predict_tiled,
    runs_whole_at,
    scale_sizes,
    tile_starts,
)


@pytest.mark.parametrize("length,tile,step", [(512, 512, 448), (700, 512, 448), (1000, 256, 192),
                                              (100, 128, 64)])
def test_windows_cover_every_pixel_and_stay_inside(length, tile, step):
    starts = tile_starts(length, tile, step)
    covered = np.zeros(max(length, tile), bool)
    for start in starts:
        assert start >= 0 and (start + tile <= length or length <= tile)
        covered[start:start + tile] = True
    assert covered[:length].all()
    assert starts == sorted(set(starts))


def test_blend_weight_tapers_at_the_border_only():
    weight = blend_weight(64, 16)
    assert weight.shape == (64, 64) and weight[32, 32] == 1.0
    assert weight[0, 0] == pytest.approx(0.05**2) and weight[0, 32] == pytest.approx(0.05)
    assert np.all(blend_weight(8, 0) == 1.0)


def test_tiling_reproduces_a_per_pixel_model_exactly():
    """A model whose output at a pixel depends on that pixel alone gives the same map tiled as
    whole: the blend weights sum out everywhere, seams included."""
    rng = np.random.default_rng(0)
    image = rng.random((300, 410, 3), dtype=np.float32)
    per_pixel = lambda batch: batch.mean(axis=-1) ** 2  # noqa: E731
    tiled = predict_tiled(image, per_pixel, tile=128, overlap=32, batch_size=3)
    np.testing.assert_allclose(tiled, per_pixel(image[None])[0], rtol=1e-5, atol=1e-6)


def test_tiling_hands_the_model_batches_of_windows():
    sizes = []

    def model(batch):
        sizes.append(batch.shape)
        return batch[..., 0]

    predict_tiled(np.zeros((200, 200, 3), np.float32), model, tile=128, overlap=64, batch_size=3)
    assert all(shape[1:] == (128, 128, 3) and shape[0] <= 3 for shape in sizes)
    assert sum(shape[0] for shape in sizes) == len(tile_starts(200, 128, 64)) ** 2


def test_flip_averaging_undoes_each_flip():
    image = np.random.default_rng(1).random((2, 16, 16, 3), dtype=np.float32)
    # an equivariant model (per pixel) gives its own output back; a position-dependent one
    # (a ramp) averages over the four flips to a symmetric map
    np.testing.assert_allclose(average_flips(image, lambda b: b[..., 0]), image[..., 0],
                               atol=1e-6)
    ramp = np.arange(16, dtype=np.float32)[None, None, :].repeat(16, 1).repeat(2, 0)
    averaged = average_flips(image, lambda b: ramp)
    np.testing.assert_allclose(averaged, np.full_like(ramp, 7.5))


def test_whole_or_windows_and_the_sizes_it_runs_at():
    assert runs_whole_at(704, 512, 3) and runs_whole_at(768, 512, 4)
    assert not runs_whole_at(800, 512, 4)  # beyond 1.5x the training size: windows
    assert not runs_whole_at(520, 512, 4)  # not a multiple of 2**depth
    assert export_side(704, 512, 3) == 704 and export_side(1024, 512, 3) == 512
    assert scale_sizes(704, (1.0, 1.11, 1.22), 3) == [704, 784, 856]


@pytest.mark.parametrize("working_size,scales", [
    (100_000, (1.0,)), (128, (1.0, 1e9)), (128, (float("nan"),)), (128, (1.0, float("inf")))])
def test_impossible_working_sizes_are_config_errors_before_any_memory(working_size, scales):
    """--working-size 100000 or --scales 1e9 would ask for a 40 GB working image (a traceback
    from OpenCV's allocator); nan or inf factors could not become a size at all."""
    from vesselseg.errors import ConfigError
    from vesselseg.tiling import MAX_WORKING_SIDE, check_working_side

    with pytest.raises(ConfigError, match=f"pixels a side is not possible; at most "
                                          f"{MAX_WORKING_SIDE}"):
        scale_sizes(working_size, scales, 4)
    assert check_working_side(MAX_WORKING_SIDE) == MAX_WORKING_SIDE
