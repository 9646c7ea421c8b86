"""Pure sliding-window and averaging helpers: how a model that takes SxS windows covers a larger
image, and how flipped copies are averaged. No model, no TensorFlow: a `run_batch` callable
(float32 [N, S, S, C] -> probabilities [N, S, S]) is all they need, so every backend shares them.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: A model on a batch: float32 [N, S, S, C] -> vessel probabilities float32 [N, S, S].
BatchRunner = Callable[[np.ndarray], np.ndarray]

#: The Keras model runs a working image whole up to this multiple of its training size (memory).
WHOLE_IMAGE_MAX_SCALE = 1.5
#: The flips whose predictions flip test-time augmentation averages (axes of an NHWC batch).
FLIP_AXES = ((), (2,), (1,), (1, 2))


def runs_whole_at(working_size: int, training_size: int, depth: int) -> bool:
    """Whether a working size runs in one piece rather than in windows of the training size: up
    to WHOLE_IMAGE_MAX_SCALE x the training size, and only at sides the U-Net's pooling
    divides exactly. One rule for the Keras path, exports and the speed benchmark."""
    return (working_size % (2**depth) == 0
            and working_size <= WHOLE_IMAGE_MAX_SCALE * training_size)


#: Largest side of a working image (an 8192x8192 float RGB image is 805 MB): a typo such as
#: --working-size 100000 or --scales 1e9 would ask for tens of gigabytes.
MAX_WORKING_SIDE = 8192


def check_working_side(side: float, what: str = "working_size") -> int:
    """`side` as a whole number of pixels, or a ConfigError naming `what` when it is not finite,
    not positive or above MAX_WORKING_SIDE (before any memory is asked for)."""
    import math

    from .errors import ConfigError

    if not (isinstance(side, (int, float)) and math.isfinite(side) and 0 < side
            <= MAX_WORKING_SIDE):
        raise ConfigError(f"{what}: a working image of {side!r} pixels a side is not possible; "
                          f"at most {MAX_WORKING_SIDE}")
    return int(side)


def scale_sizes(working_size: int, scales: tuple[float, ...], depth: int) -> list[int]:
    """The sides multi-scale inference runs at: each factor times the working size, rounded to
    a side the U-Net's pooling divides (each checked by `check_working_side`)."""
    step = 2**depth
    check_working_side(working_size)
    sides = []
    for factor in scales:
        side = working_size * factor
        check_working_side(side, f"scales: {factor:g} x working_size {working_size}")
        sides.append(int(round(side / step)) * step)
    return sides


def tile_starts(length: int, tile: int, step: int) -> list[int]:
    """Window offsets along one side: every `step`, the last one flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def blend_weight(tile: int, overlap: int) -> np.ndarray:
    """A tile's weight when overlapping windows are blended: 1 inside, tapering to 0.05 over
    the `overlap` border, so window edges (where a convolution sees padding) count little."""
    ramp = np.ones(tile, np.float32)
    if overlap > 0:
        edge = np.linspace(0.05, 1.0, overlap, dtype=np.float32)
        ramp[:overlap] = edge
        ramp[-overlap:] = edge[::-1]
    return np.outer(ramp, ramp)


def average_flips(batch: np.ndarray, run_batch: BatchRunner) -> np.ndarray:
    """The mean of the predictions of a batch and its three flips, each flipped back."""
    total = np.zeros(batch.shape[:3], dtype=np.float32)
    for axes in FLIP_AXES:
        flipped = np.ascontiguousarray(np.flip(batch, axes)) if axes else batch
        out = run_batch(flipped)
        total += np.flip(out, axes) if axes else out
    return total / len(FLIP_AXES)


def predict_tiled(image: np.ndarray, run_batch: BatchRunner, tile: int, overlap: int,
                  batch_size: int) -> np.ndarray:
    """Probabilities of an HxWxC image from sliding `tile`-sized windows overlapping by
    `overlap`, run `batch_size` at a time and blended by `blend_weight`."""
    height, width = image.shape[:2]
    step = max(1, tile - overlap)
    windows = [(y, x) for y in tile_starts(height, tile, step)
               for x in tile_starts(width, tile, step)]
    weight = blend_weight(tile, overlap)
    total = np.zeros((height, width), np.float32)
    norm = np.zeros((height, width), np.float32)
    for start in range(0, len(windows), max(1, batch_size)):
        chunk = windows[start:start + max(1, batch_size)]
        out = run_batch(np.stack([image[y:y + tile, x:x + tile] for y, x in chunk]))
        for (y, x), probability in zip(chunk, out):
            total[y:y + tile, x:x + tile] += probability * weight
            norm[y:y + tile, x:x + tile] += weight
    return total / np.maximum(norm, 1e-6)


def export_side(working_size: int, training_size: int, depth: int) -> int:
    """The fixed input side of a run's exports: its working size when that runs whole, else its
    training size (the windows larger working sizes are cut into)."""
    return working_size if runs_whole_at(working_size, training_size, depth) else training_size
