"""Vessel morphology: per-image measurements of a binary vessel mask inside its field of view.

`measure(mask, fov)` returns one row of fixed columns (`COLUMNS`): vessel area and length
density, box-counting fractal dimensions, vessel widths along the centreline, the vessel graph
(segments, branch points, end points) and tortuosity (distance measure; Grisan et al. 2008
tortuosity density). Definitions and their publications: docs/morphology.md.

Every length comes three ways: in pixels (`_px`), in micrometres (`_um`, NaN unless the pixel
size is given) and divided by the FOV diameter (`_norm`, FOV diameter = 2 sqrt(FOV area / pi)),
so that photos from cameras of different resolution compare. Scales that are not lengths to
report (the box sizes of the fractal fit, the smoothing of centrelines for tortuosity) are set
as fractions of the FOV diameter for the same reason.

A value is NaN only when it is undefined for the image (no vessel, no FOV, a FOV too small to
measure, a mask that fills the FOV); `reason` then says why, and is "" otherwise. skan (the
vessel graph) is imported on first use: it brings numba, whose first call in a process compiles
for a few seconds (`warm_up` does it ahead of time).

Over 350 lines: every measurement with its definition beside the others it shares skeletons and
scales with, plus the centreline figure.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import skeletonize

from .io import atomic_path

#: The keys of `measure`'s result, in order (CSV columns). Suffixes: _px pixels, _um micrometres
#: (NaN without a pixel size), _norm divided by the FOV diameter (lengths) or multiplied by it
#: (densities per length), so that it has no unit.
COLUMNS: tuple[str, ...] = (
    "fov_area_px", "fov_diameter_px", "fov_diameter_um", "pixel_size_um",
    "vessel_area_density",
    "skeleton_length_px", "skeleton_length_um",
    "length_density_px", "length_density_um", "length_density_norm",
    "fd_mask", "fd_mask_r2", "fd_skeleton", "fd_skeleton_r2", "fd_box_min_px", "fd_box_max_px",
    "width_mean_px", "width_median_px", "width_p10_px", "width_p90_px",
    "width_mean_um", "width_median_um", "width_p10_um", "width_p90_um",
    "width_mean_norm", "width_median_norm", "width_p10_norm", "width_p90_norm",
    "segments", "branch_points", "end_points",
    "segment_length_mean_px", "segment_length_mean_um", "segment_length_mean_norm",
    "tortuosity_dm", "tortuosity_density_px", "tortuosity_density_um",
    "tortuosity_density_norm",
    "reason",
)
#: A FOV narrower than this (diameter in pixels) is too small to measure anything.
MIN_FOV_DIAMETER_PX = 32.0
#: Box sizes of the fractal fit: FD_BOX_STEPS sizes in geometric steps from the first to the
#: second fraction of the FOV diameter, rounded to whole pixels (DRIVE: 2-134 px, HRF: 12-742 px):
#: the same stretch of retina on every camera, from about a vessel's width to a quarter of the
#: FOV, the scales of the branching pattern.
FD_BOX_FRACTIONS = (1 / 256, 1 / 4)
FD_BOX_STEPS = 7
#: Fewer distinct box sizes than this (a tiny FOV) leave the fractal dimensions undefined.
FD_MIN_SIZES = 4
#: Gaussian smoothing (sigma, fraction of the FOV diameter) of a centreline before its arc length
#: is measured: removes the pixel staircase (which adds ~5 % to a curve's 8-connected length).
ARC_SMOOTHING = 1 / 300
#: Smoothing (same unit) of a centreline before its curvature sign is read for turn points.
TURN_SMOOTHING = 1 / 100
#: Hysteresis of the curvature sign: it changes only where |curvature| > this / FOV diameter,
#: i.e. where the radius of curvature is under half the FOV diameter (DRIVE: 267 px).
TURN_CURVATURE = 2.0
#: Segments shorter than this fraction of the FOV diameter get no tortuosity (too short for one).
MIN_TORTUOSITY_LENGTH = 1 / 50
#: The percentiles of the width distribution reported as width_p10 and width_p90.
WIDTH_PERCENTILES = (10, 90)
COLOUR_BY = ("width", "tortuosity")


# -- inputs ----------------------------------------------------------------------------------------
def _check(mask: np.ndarray, fov: np.ndarray, pixel_size_um: float | None):
    mask, fov = np.asarray(mask), np.asarray(fov)
    if mask.ndim != 2 or fov.ndim != 2:
        raise ValueError(f"mask and FOV must be 2-D (HxW), got shapes {mask.shape} and "
                         f"{fov.shape}")
    if mask.shape != fov.shape:
        raise ValueError(f"mask shape {mask.shape} and FOV shape {fov.shape} differ")
    if pixel_size_um is not None and not (math.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise ValueError(f"pixel_size_um must be a positive number, got {pixel_size_um!r}")
    return mask.astype(bool, copy=False), fov.astype(bool, copy=False)


def fov_diameter(fov_area: float) -> float:
    """Diameter of the disc with the FOV's area: the size-free versions divide by it."""
    return 2.0 * math.sqrt(fov_area / math.pi)


def _bbox(array: np.ndarray) -> tuple[slice, slice]:
    rows, cols = np.flatnonzero(array.any(axis=1)), np.flatnonzero(array.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


# -- fractal dimension -----------------------------------------------------------------------------
def box_sizes(diameter: float) -> list[int]:
    """The box sizes (pixels) of the fractal fit for a FOV of this diameter (FD_BOX_FRACTIONS)."""
    low, high = (diameter * f for f in FD_BOX_FRACTIONS)
    sizes = np.rint(np.geomspace(low, high, FD_BOX_STEPS)).astype(int)
    return sorted({int(s) for s in sizes if s >= 1})


def box_counts(binary: np.ndarray, sizes: list[int]) -> np.ndarray:
    """Number of boxes of each size, on a grid anchored at the array's top-left corner (the last
    row and column of boxes may stick out), that hold at least one True pixel."""
    integral = cv2.integral(binary.astype(np.uint8), sdepth=cv2.CV_32S)
    height, width = binary.shape
    counts = []
    for size in sizes:
        rows = np.minimum(np.arange(0, height + size, size), height)
        cols = np.minimum(np.arange(0, width + size, size), width)
        rows, cols = np.unique(rows), np.unique(cols)
        corners = integral[np.ix_(rows, cols)]
        sums = corners[1:, 1:] - corners[:-1, 1:] - corners[1:, :-1] + corners[:-1, :-1]
        counts.append(np.count_nonzero(sums))
    return np.asarray(counts, dtype=np.float64)


def fractal_dimension(binary: np.ndarray, sizes: list[int]) -> tuple[float, float]:
    """(box-counting dimension, R^2 of the fit): the least-squares slope of log N(s) against
    log(1/s), N(s) the number of boxes of side s that the mask touches."""
    if len(sizes) < FD_MIN_SIZES:
        return math.nan, math.nan
    counts = box_counts(binary, sizes)
    if counts.min() <= 0:
        return math.nan, math.nan
    x, y = -np.log(np.asarray(sizes, np.float64)), np.log(counts)
    slope, intercept = np.polyfit(x, y, 1)
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum((y - (slope * x + intercept)) ** 2)) / total if total > 0 else math.nan
    return float(slope), r2


# -- widths ----------------------------------------------------------------------------------------
def distance_map(vessels: np.ndarray) -> np.ndarray:
    """Euclidean distance of each vessel pixel's centre to the nearest background pixel's centre
    (0 on background; outside the array counts as background)."""
    padded = np.pad(vessels, 1).astype(np.uint8)
    return cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]


def local_widths(distance: np.ndarray, skeleton: np.ndarray) -> np.ndarray:
    """Vessel width at every centreline pixel (0 elsewhere), in pixels.

    width = d(p) + max d(q) over the 8 neighbours q of p that are not centreline pixels, d the
    distance map. 2 d(p) alone overshoots by one pixel (d reaches the centre of the first
    background pixel, half a pixel past the edge, on both sides) and cannot see that an
    even-width vessel has two middle rows of which the skeleton keeps one; the deepest
    off-centreline neighbour is the far half. Vessels drawn w pixels wide measure exactly w
    along the axes and within 0.5 px at other angles (tests/test_morphology.py)."""
    padded = np.pad(distance.astype(np.float32, copy=False), 1)  # 0 all around: background
    flat, stride = padded.ravel(), padded.shape[1]
    at = np.flatnonzero(np.pad(skeleton, 1))
    centre = flat[at]
    flat[at] = 0.0  # now the distances of off-centreline pixels only
    deepest = np.zeros(at.size, np.float32)
    for step in (-stride - 1, -stride, -stride + 1, -1, 1, stride - 1, stride, stride + 1):
        np.maximum(deepest, flat[at + step], out=deepest)
    widths = np.zeros_like(padded)
    widths.ravel()[at] = centre + deepest
    return widths[1:-1, 1:-1]


# -- centrelines and tortuosity --------------------------------------------------------------------
@dataclass(frozen=True)
class Tortuosity:
    """Of each of a list of centreline segments: distance measure (arc / chord), Grisan
    tortuosity density (per pixel of length), arc length (smoothed, pixels) and number of
    constant-curvature-sign sub-curves."""

    dm: np.ndarray
    density: np.ndarray
    arc: np.ndarray
    parts: np.ndarray


def _padded_blocks(counts: np.ndarray, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Curves of `counts` points stored one after the other, each extended by `pad` points at
    both ends: for every entry of the extended curves, the index of the point it copies and,
    for the added points, the index of the curve's end it is reflected through (2 end - point;
    -1 for the curve's own points). Reflections of curves shorter than `pad` stop at the far end.
    """
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    block = counts + 2 * pad
    owner = np.repeat(np.arange(counts.size), block)
    local = np.arange(block.sum()) - np.repeat(np.cumsum(block) - block, block) - pad
    last = (counts - 1)[owner]
    head, tail = local < 0, local > last
    source = np.clip(local, 0, last)
    source = np.where(head, np.minimum(-local, last), source)
    source = np.where(tail, np.maximum(2 * last - local, 0), source)
    anchor = np.where(head, 0, np.where(tail, last, -1))
    return starts[owner] + source, np.where(anchor >= 0, starts[owner] + anchor, -1)


def tortuosity(paths: list[np.ndarray], diameter: float) -> Tortuosity:
    """Tortuosity of segments given as ordered (row, col) centreline pixels, all at once.

    Each centreline is resampled at 1 px steps and smoothed (Gaussian along the curve, sigma
    ARC_SMOOTHING x the FOV diameter, extended at both ends by point reflection so that ends
    stay put and straight lines stay straight): the pixel staircase would add up to 8 % to the
    arc length. Distance measure DM = arc length / chord. Tortuosity density (Grisan et al.
    2008): TD = (n - 1) / n * (1 / L) * sum_i (L_i / C_i - 1) over the n sub-curves between
    turn points (curvature sign changes, read on a curve smoothed by TURN_SMOOTHING with a
    hysteresis of TURN_CURVATURE / diameter), of arc lengths L_i and chords C_i, L the whole arc:
    0 for a straight line and for a single arc of any curvature."""
    count = len(paths)
    if count == 0:
        empty = np.zeros(0)
        return Tortuosity(empty, empty, empty, empty.astype(int))
    raw = np.concatenate(paths).astype(np.float64)
    sizes = np.array([len(p) for p in paths])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    steps = np.hypot(*np.diff(raw, axis=0).T)
    steps[starts[1:] - 1] = 1.0  # a gap between curves keeps the abscissa increasing
    along = np.concatenate([[0.0], np.cumsum(steps)])
    lengths = along[starts + sizes - 1] - along[starts]
    # resample at unit arc steps
    counts = np.maximum(2, np.rint(lengths).astype(np.int64) + 1)
    owner = np.repeat(np.arange(count), counts)
    first = np.cumsum(counts) - counts
    position = np.arange(counts.sum()) - np.repeat(first, counts)
    target = along[starts][owner] + position * (lengths / (counts - 1))[owner]
    uniform = np.stack([np.interp(target, along, raw[:, k]) for k in range(2)], axis=1)
    # smooth both ways within padded blocks (the kernel never reaches the next curve)
    arc_sigma, turn_sigma = ARC_SMOOTHING * diameter, TURN_SMOOTHING * diameter
    pad = int(4 * max(arc_sigma, turn_sigma) + 0.5) + 1
    source, anchor = _padded_blocks(counts, pad)
    extended = uniform[source]
    reflected = anchor >= 0
    extended[reflected] = 2 * uniform[anchor[reflected]] - extended[reflected]
    inner = ~reflected
    smooth = ndi.gaussian_filter1d(extended, arc_sigma, axis=0)[inner]
    turning = ndi.gaussian_filter1d(extended, turn_sigma, axis=0)
    # arc lengths and chords
    step = np.hypot(*np.diff(smooth, axis=0).T)
    step[first[1:] - 1] = 0.0
    arc = np.concatenate([[0.0], np.cumsum(step)])
    last = first + counts - 1
    length = arc[last] - arc[first]
    chord = np.hypot(*(smooth[last] - smooth[first]).T)
    # turn points: where the curvature takes a new sign (|curvature| above the hysteresis), split
    # at its last zero crossing before that
    dy, dx = np.gradient(turning[:, 0]), np.gradient(turning[:, 1])
    ddy, ddx = np.gradient(dy), np.gradient(dx)
    curvature = ((dx * ddy - dy * ddx) / np.maximum(np.hypot(dx, dy), 1e-12) ** 3)[inner]
    threshold = TURN_CURVATURE / diameter
    state = np.where(curvature > threshold, 1, np.where(curvature < -threshold, -1, 0))
    marked = np.flatnonzero(state)
    new_sign = ((owner[marked[1:]] == owner[marked[:-1]])
                & (state[marked[1:]] != state[marked[:-1]]))
    changes = marked[1:][new_sign]
    signs = np.sign(curvature)
    crossings = np.flatnonzero((signs[1:] != signs[:-1]) & (owner[1:] == owner[:-1])) + 1
    splits = crossings[np.searchsorted(crossings, changes, side="right") - 1] if changes.size \
        else np.zeros(0, np.int64)
    bounds = np.unique(np.concatenate([first, last, splits]))
    same = owner[bounds[1:]] == owner[bounds[:-1]]
    left, right = bounds[:-1][same], bounds[1:][same]
    part_chord = np.hypot(*(smooth[right] - smooth[left]).T)
    part_arc = arc[right] - arc[left]
    ratio = np.divide(part_arc, part_chord, out=np.ones_like(part_arc), where=part_chord > 0)
    excess = np.bincount(owner[left], weights=ratio - 1.0, minlength=count)
    parts = np.bincount(owner[left], minlength=count)
    valid = (length > 0) & (chord > 0)
    safe_length = np.where(valid, length, 1.0)
    density = np.where(valid, (parts - 1) / np.maximum(parts, 1) * excess / safe_length, np.nan)
    dm = np.where(valid, np.maximum(1.0, safe_length / np.where(valid, chord, 1.0)), np.nan)
    return Tortuosity(dm, density, length, parts)


# -- the analysis ----------------------------------------------------------------------------------
@dataclass
class Centreline:
    """The centreline of a vessel mask (inside the FOV's bounding box `box`) and its graph."""

    box: tuple[slice, slice]
    skeleton: np.ndarray  # bool, in the box
    widths: np.ndarray  # float32 per pixel of the box, > 0 on centreline pixels (not branch ones)
    paths: list[np.ndarray]  # (row, col) pixels of each segment, in order, in the box
    lengths: np.ndarray  # pixel-path length of each segment (skan branch_distance)
    measured: np.ndarray  # indices of the segments with a tortuosity (not loops, not too short)
    tortuosity: Tortuosity  # of the `measured` segments
    branch_points: int
    end_points: int


def centreline(vessels: np.ndarray, box: tuple[slice, slice], diameter: float) -> Centreline:
    """Skeleton (scikit-image), widths, and the graph of segments (skan) of a vessel mask."""
    crop = vessels[box]
    skeleton = skeletonize(crop)
    distance = distance_map(crop)
    widths = local_widths(distance, skeleton)
    degree = cv2.filter2D(skeleton.astype(np.uint8), -1, np.ones((3, 3), np.float32),
                          borderType=cv2.BORDER_CONSTANT) - 1
    linked = skeleton & (degree > 0)  # isolated pixels (specks) have no length and no segment
    if not linked.any():
        none = np.zeros(0, np.int64)
        return Centreline(box, skeleton, widths, [], np.zeros(0), none, tortuosity([], 1.0),
                          0, 0)
    from skan import Skeleton

    # skan.summarize gives the same columns from these attributes, but under pandas >= 3.1 it
    # warns (a deprecated DataFrame.rename(inplace=True)) on every call: read them directly.
    graph = Skeleton(linked)
    nodes = graph.degrees
    coordinates = graph.coordinates.astype(np.intp)
    junction_nodes = np.flatnonzero(nodes >= 3)
    rows, cols = coordinates[junction_nodes].T
    junction = np.zeros(crop.shape, np.uint8)
    junction[rows, cols] = 1
    widths[junction > 0] = 0
    clusters, cluster_image = cv2.connectedComponents(junction, connectivity=8)
    cluster_of = np.zeros(nodes.size, np.int64)
    cluster_of[junction_nodes] = cluster_image[rows, cols]
    indptr, indices = graph.paths.indptr, graph.paths.indices
    src, dst = indices[indptr[:-1]], indices[indptr[1:] - 1]
    # a step between two pixels of one junction cluster is part of a branch point, not a segment
    internal = ((np.diff(indptr) == 2) & (cluster_of[src] > 0)
                & (cluster_of[src] == cluster_of[dst]))
    keep = np.flatnonzero(~internal)
    paths = [coordinates[indices[indptr[i]:indptr[i + 1]]] for i in keep]
    lengths = graph.path_lengths()[keep]
    loops = (src == dst)[keep]
    measured = np.flatnonzero(~loops & (lengths >= MIN_TORTUOSITY_LENGTH * diameter))
    return Centreline(box, skeleton, widths, paths, lengths, measured,
                      tortuosity([paths[i] for i in measured], diameter), clusters - 1,
                      int(np.count_nonzero(nodes == 1)))


# -- the measurements ------------------------------------------------------------------------------
def _nan_row(pixel_size_um: float | None) -> dict[str, float | str]:
    row: dict[str, float | str] = dict.fromkeys(COLUMNS, math.nan)
    row["pixel_size_um"] = math.nan if pixel_size_um is None else float(pixel_size_um)
    row["reason"] = ""
    return row


def _set_length(row: dict, name: str, value_px: float, diameter: float,
                pixel_size_um: float | None, power: int = 1) -> None:
    """row[name_px], row[name_um] and row[name_norm] of a length (power 1) or of a density per
    length (power -1)."""
    row[f"{name}_px"] = float(value_px)
    if f"{name}_um" in row:
        row[f"{name}_um"] = (math.nan if pixel_size_um is None
                             else float(value_px) * pixel_size_um ** power)
    if f"{name}_norm" in row:
        row[f"{name}_norm"] = float(value_px) * diameter ** -power


def measure(mask: np.ndarray, fov: np.ndarray,
            pixel_size_um: float | None = None) -> dict[str, float | str]:
    """The morphology of one image: a dict with the keys of `COLUMNS`, in order.

    mask: HxW vessel mask (vessel pixels outside the FOV are ignored); fov: HxW field of view;
    pixel_size_um: the side of a pixel on the retina, for the `_um` columns. Values are floats
    (counts too, so that they can be NaN); `reason` is "" or says why values are NaN. Shapes
    that differ are a ValueError; every other input gives a row."""
    mask, fov = _check(mask, fov, pixel_size_um)
    row = _nan_row(pixel_size_um)
    fov_area = int(np.count_nonzero(fov))
    if fov_area == 0:
        row["reason"] = "empty FOV: no pixel inside the field of view"
        return row
    diameter = fov_diameter(fov_area)
    row["fov_area_px"] = float(fov_area)
    _set_length(row, "fov_diameter", diameter, diameter, pixel_size_um)
    vessels = mask & fov
    vessel_area = int(np.count_nonzero(vessels))
    row["vessel_area_density"] = vessel_area / fov_area
    if diameter < MIN_FOV_DIAMETER_PX:
        row["reason"] = (f"FOV too small: {diameter:.1f} px across, at least "
                         f"{MIN_FOV_DIAMETER_PX:g} needed")
        return row
    if vessel_area == 0:
        _set_length(row, "skeleton_length", 0.0, diameter, pixel_size_um)
        _set_length(row, "length_density", 0.0, diameter, pixel_size_um, power=-1)
        row.update(segments=0.0, branch_points=0.0, end_points=0.0)
        row["reason"] = "no vessel pixel inside the FOV: widths, fractal dimensions, " \
                        "segment lengths and tortuosity are undefined"
        return row
    if vessel_area == fov_area:
        row["reason"] = "the mask covers the whole FOV: no vessel to tell from background"
        return row
    box = _bbox(fov)
    line = centreline(vessels, box, diameter)
    reasons = []
    length = float(line.lengths.sum())
    _set_length(row, "skeleton_length", length, diameter, pixel_size_um)
    _set_length(row, "length_density", length / fov_area, diameter, pixel_size_um, power=-1)

    sizes = box_sizes(diameter)
    if len(sizes) >= FD_MIN_SIZES:
        row["fd_box_min_px"], row["fd_box_max_px"] = float(sizes[0]), float(sizes[-1])
        row["fd_mask"], row["fd_mask_r2"] = fractal_dimension(vessels[box], sizes)
        row["fd_skeleton"], row["fd_skeleton_r2"] = fractal_dimension(line.skeleton, sizes)
    else:
        reasons.append(f"FOV too small for box counting ({len(sizes)} box sizes)")

    widths = line.widths[line.widths > 0]
    if widths.size:
        low, high = np.percentile(widths, WIDTH_PERCENTILES)
        for name, value in (("width_mean", widths.mean()), ("width_median", np.median(widths)),
                            ("width_p10", low), ("width_p90", high)):
            _set_length(row, name, float(value), diameter, pixel_size_um)
    else:
        reasons.append("no centreline pixel outside branch points: widths undefined")

    row["segments"] = float(len(line.paths))
    row["branch_points"] = float(line.branch_points)
    row["end_points"] = float(line.end_points)
    if line.paths:
        _set_length(row, "segment_length_mean", float(line.lengths.mean()), diameter,
                    pixel_size_um)
    else:
        reasons.append("no segment (the centreline is isolated pixels)")

    found = line.tortuosity
    finite = np.isfinite(found.dm)
    if finite.any():
        arcs = found.arc[finite]
        row["tortuosity_dm"] = float(np.average(found.dm[finite], weights=arcs))
        density = float(np.average(found.density[finite], weights=arcs))
        _set_length(row, "tortuosity_density", density, diameter, pixel_size_um, power=-1)
    else:
        reasons.append(f"no segment of at least {MIN_TORTUOSITY_LENGTH * diameter:.0f} px "
                       f"that is not a loop: tortuosity undefined")
    row["reason"] = "; ".join(reasons)
    return row


def warm_up() -> None:
    """Import skan and compile its numba code on a tiny skeleton (a few seconds, once per
    process): call it in a thread while the model loads to take it off the first image."""
    demo = np.zeros((9, 9), bool)
    demo[1:8, 4] = True
    demo[4, 4:8] = True
    centreline(demo, (slice(0, 9), slice(0, 9)), 100.0)


# -- figures ---------------------------------------------------------------------------------------
def centreline_values(mask: np.ndarray, fov: np.ndarray, colour_by: str = "width",
                      pixel_size_um: float | None = None) -> np.ndarray:
    """HxW float map: on centreline pixels the local width (micrometres when the pixel size is
    given, else pixels) or the distance-measure tortuosity of their segment; NaN elsewhere."""
    if colour_by not in COLOUR_BY:
        raise ValueError(f"colour_by must be one of {', '.join(COLOUR_BY)}, got {colour_by!r}")
    mask, fov = _check(mask, fov, pixel_size_um)
    values = np.full(mask.shape, np.nan, np.float32)
    vessels = mask & fov
    fov_area = int(np.count_nonzero(fov))
    if not vessels.any() or fov_area == 0:
        return values
    box = _bbox(fov)
    line = centreline(vessels, box, fov_diameter(fov_area))
    inside = values[box]
    if colour_by == "width":
        scale = pixel_size_um or 1.0
        inside[line.widths > 0] = line.widths[line.widths > 0] * scale
    else:
        for index, dm in zip(line.measured, line.tortuosity.dm):
            if math.isfinite(dm):
                path = line.paths[index]
                inside[path[:, 0], path[:, 1]] = dm
    return values


def draw_centreline(ax, image: np.ndarray | None, mask: np.ndarray, fov: np.ndarray,
                    colour_by: str = "width", pixel_size_um: float | None = None,
                    title: str | None = None):
    """Draw the photo (dimmed; grey when `image` is None) with the centreline coloured by width
    or tortuosity onto a matplotlib Axes, with a colour bar; returns the AxesImage."""
    values = centreline_values(mask, fov, colour_by, pixel_size_um)
    fov = np.asarray(fov, bool)
    if image is None:
        ax.imshow(np.where(fov, 0.25, 0.0), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow((np.asarray(image, np.float32) * 0.45).astype(np.uint8),
                  cmap="gray" if np.ndim(image) == 2 else None)
    area = int(np.count_nonzero(fov))
    thickness = max(2, round(fov_diameter(area) / 300)) if area else 2
    shown = values
    if thickness > 1:  # a 1-pixel line vanishes when a large photo is drawn small
        kernel = np.ones((2 * thickness - 1,) * 2, np.uint8)
        filled = cv2.dilate(np.nan_to_num(values, nan=-1.0), kernel)
        shown = np.where(filled >= 0, filled, np.nan).astype(np.float32)
    finite = values[np.isfinite(values)]
    if colour_by == "width":
        cmap, label = "viridis", "vessel width (" + ("µm" if pixel_size_um else "px") + ")"
        limits = (np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0))
    else:
        cmap, label = "magma", "tortuosity (arc / chord)"
        limits = (1.0, max(1.05, float(np.percentile(finite, 98))) if finite.size else 1.1)
    shown_image = ax.imshow(np.ma.masked_invalid(shown), cmap=cmap, vmin=float(limits[0]),
                            vmax=float(limits[1]), interpolation="nearest")
    ax.figure.colorbar(shown_image, ax=ax, fraction=0.046, pad=0.02, label=label)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)
    return shown_image


def save_centreline_figure(path: str | Path, image: np.ndarray | None, mask: np.ndarray,
                           fov: np.ndarray, colour_by: str = "width",
                           pixel_size_um: float | None = None, title: str | None = None,
                           dpi: int = 110) -> Path:
    """`draw_centreline` in a figure of its own, written atomically (PNG, or the suffix's
    format)."""
    from matplotlib.figure import Figure

    path = Path(path)
    height, width = np.shape(mask)
    figure = Figure(figsize=(7.0, 7.0 * height / width + 0.4))
    draw_centreline(figure.add_subplot(), image, mask, fov, colour_by, pixel_size_um, title)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=dpi,
                       bbox_inches="tight")
    return path
