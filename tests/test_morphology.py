"""vesselseg.morphology: known answers on drawn shapes, sane values on the synthetic fundus
generator's exact masks, NaN with a reason (never a crash or a warning) on bad input."""
from __future__ import annotations

import math
import subprocess
import sys
import warnings

import cv2
import numpy as np
import pytest

from vesselseg import morphology
from vesselseg.datasets.synthetic import generate_fundus
from vesselseg.morphology import COLUMNS, fractal_dimension, measure


@pytest.fixture(autouse=True)
def _no_warnings():
    """Every call here must be silent: a warning per image would flood a batch's log."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def full(n: int) -> np.ndarray:
    return np.ones((n, n), bool)


def capsule(width: float, angle: float, length: float = 400, n: int = 600) -> np.ndarray:
    """A straight vessel `width` px wide with round ends: the pixels whose centre lies closer
    than width / 2 to a segment (of `length`, at `angle` degrees) through the image centre.
    Even widths on the axes are centred between pixel rows, so that they cover exactly w rows."""
    yy, xx = np.mgrid[0:n, 0:n] - n / 2
    if width % 2 == 0 and angle % 90 == 0:
        yy, xx = yy + 0.5, xx + 0.5
    t = math.radians(angle)
    u, v = xx * math.cos(t) + yy * math.sin(t), -xx * math.sin(t) + yy * math.cos(t)
    return np.hypot(u - np.clip(u, -length / 2, length / 2), v) < width / 2


def polyline(points: np.ndarray, thickness: int, n: int) -> np.ndarray:
    """A curve given as (row, col) points, drawn `thickness` px thick."""
    image = np.zeros((n, n), np.uint8)
    fixed = np.round(np.asarray(points)[:, ::-1] * 16).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(image, [fixed], False, 1, thickness=thickness, lineType=cv2.LINE_8, shift=4)
    return image.astype(bool)


# -- fractal dimension -----------------------------------------------------------------------------
def test_fractal_dimension_of_a_filled_disk_is_2():
    yy, xx = np.mgrid[0:1024, 0:1024]
    disk = np.hypot(yy - 512, xx - 512) < 400
    dimension, r2 = fractal_dimension(disk, [1, 2, 4, 8, 16, 25])  # boxes up to r / 16
    assert dimension == pytest.approx(2.0, abs=0.05)
    assert r2 > 0.99


@pytest.mark.parametrize("slope, offset", [(0.0, 0), (1.0, 0), (0.3, 0), (0.3, 50), (0.6, 0)])
def test_fractal_dimension_of_a_straight_line_is_1(slope, offset):
    """Boxes from 4 px: below that a digital oblique line is a chain of points, not a line. (On
    one grid, some oblique lines fall on box corners at some sizes only, which moves their
    slope by up to 0.07: a property of box counting, averaged out over a vessel tree.)"""
    line = np.zeros((2048, 2048), bool)
    rows = np.arange(50, 1950)
    line[rows, (offset + rows * slope).astype(int)] = True
    for binary in (line, line.T):
        dimension, r2 = fractal_dimension(binary, [4, 8, 16, 32, 64])
        assert dimension == pytest.approx(1.0, abs=0.05)
        assert r2 > 0.99


@pytest.mark.parametrize("depth", [6, 8, 10])
def test_fractal_dimension_of_a_sierpinski_triangle(depth):
    i, j = np.mgrid[0:2 ** depth, 0:2 ** depth]
    triangle = (i & j) == 0  # Pascal's triangle mod 2
    dimension, _ = fractal_dimension(triangle, [2 ** k for k in range(depth - 2)])
    assert dimension == pytest.approx(math.log(3) / math.log(2), abs=0.05)


def test_box_sizes_follow_the_fov_diameter():
    assert morphology.box_sizes(534.5)[0] == 2 and morphology.box_sizes(534.5)[-1] == 134
    sizes = morphology.box_sizes(2966.5)
    assert sizes[0] == 12 and sizes[-1] == 742 and len(sizes) == morphology.FD_BOX_STEPS


# -- widths ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("width", [1, 2, 3, 4, 5, 6, 8, 11])
def test_widths_of_drawn_lines_along_the_axes_are_exact(width):
    for angle in (0, 90):
        row = measure(capsule(width, angle), full(600))
        assert row["width_median_px"] == pytest.approx(width, abs=0.01)
        assert row["width_mean_px"] == pytest.approx(width, abs=0.1)


@pytest.mark.parametrize("width", [2, 3, 5, 7, 9, 12])
@pytest.mark.parametrize("angle", [20, 30, 60])
def test_widths_of_oblique_drawn_lines_within_half_a_pixel(width, angle):
    row = measure(capsule(width, angle), full(600))
    assert row["width_median_px"] == pytest.approx(width, abs=0.5)
    assert row["width_mean_px"] == pytest.approx(width, abs=0.5)


def test_widths_in_micrometres_and_relative_to_the_fov():
    row = measure(capsule(5, 0), full(600), pixel_size_um=7.5)
    assert row["width_median_um"] == pytest.approx(5 * 7.5)
    assert row["width_median_norm"] == pytest.approx(5 / row["fov_diameter_px"])
    assert row["fov_diameter_px"] == pytest.approx(2 * math.sqrt(600 * 600 / math.pi))
    assert row["length_density_um"] == pytest.approx(row["length_density_px"] / 7.5)
    assert row["tortuosity_density_um"] == pytest.approx(row["tortuosity_density_px"] / 7.5)
    assert row["pixel_size_um"] == 7.5
    assert math.isnan(measure(capsule(5, 0), full(600))["width_median_um"])


# -- tortuosity ------------------------------------------------------------------------------------
@pytest.mark.parametrize("angle", [0, 30, 45])
def test_a_straight_segment_has_tortuosity_1(angle):
    row = measure(capsule(3, angle), full(600))
    assert row["segments"] == 1
    assert row["tortuosity_dm"] == pytest.approx(1.0, abs=0.002)
    assert row["tortuosity_density_px"] == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("thickness", [1, 3])
def test_a_half_circle_has_tortuosity_pi_over_2(thickness):
    t = np.linspace(0, math.pi, 2000)
    half = np.stack([256 + 150 * np.cos(t), 186 + 150 * np.sin(t)], axis=1)
    row = measure(polyline(half, thickness, 512), full(512))
    assert row["segments"] == 1
    assert row["tortuosity_dm"] == pytest.approx(math.pi / 2, rel=0.02)
    assert row["tortuosity_density_px"] == 0.0  # one arc: no change of direction


def test_tortuosity_density_of_an_s_curve():
    """Two half circles of radius R: n = 2 sub-curves, each of arc pi R over a chord of 2 R, so
    TD = (2 - 1) / 2 * 1 / (2 pi R) * 2 (pi / 2 - 1) (Grisan et al. 2008)."""
    radius, t = 80, np.linspace(0, math.pi, 1000)
    first = np.stack([256 - radius * np.sin(t), 256 - radius - radius * np.cos(t)], axis=1)
    second = np.stack([256 + radius * np.sin(t), 256 + radius - radius * np.cos(t)], axis=1)
    row = measure(polyline(np.concatenate([first, second[1:]]), 2, 512), full(512))
    expected = (math.pi / 2 - 1) / (2 * math.pi * radius)
    assert row["tortuosity_density_px"] == pytest.approx(expected, rel=0.05)
    assert row["tortuosity_dm"] == pytest.approx(math.pi / 2, rel=0.02)  # 2 pi R / 4 R


# -- the vessel graph ------------------------------------------------------------------------------
def test_a_y_junction():
    image = np.zeros((256, 256), np.uint8)
    for end in ((128, 30), (50, 220), (206, 220)):
        cv2.line(image, (128, 128), end, 1, 3)
    row = measure(image.astype(bool), full(256))
    assert (row["branch_points"], row["end_points"], row["segments"]) == (1, 3, 3)
    assert row["reason"] == ""


def test_a_crossing_with_two_adjacent_junction_pixels_is_one_branch_point():
    """A pattern of DRIVE 01's skeleton: four arms meet at two neighbouring junction pixels
    (40, 40) and (40, 41). skan links them by a one-step path; that step is part of the branch
    point, not a segment."""
    cross = np.zeros((80, 80), bool)
    cross[40, 5:42] = True  # left arm, through both junction pixels
    cross[39, 41] = True
    cross[5:39, 42] = True  # up arm
    cross[41:75, 40] = True  # down arm
    cross[41, 42:44] = True  # right arm, then up-right
    for i in range(30):
        cross[40 - i, 44 + i] = True
    row = measure(cross, full(80))
    assert (row["branch_points"], row["end_points"], row["segments"]) == (1, 4, 4)


def test_a_ring_is_one_segment_without_tortuosity():
    ring = cv2.circle(np.zeros((128, 128), np.uint8), (64, 64), 40, 1, 2).astype(bool)
    row = measure(ring, full(128))
    assert (row["segments"], row["branch_points"], row["end_points"]) == (1, 0, 0)
    assert math.isnan(row["tortuosity_dm"]) and "tortuosity" in row["reason"]


# -- synthetic fundus photos -----------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synthetic_fundus_masks_give_sane_values(seed):
    photo = generate_fundus(seed, 512)
    row = measure(photo.vessels, photo.fov, pixel_size_um=10.0)
    assert list(row) == list(COLUMNS)
    assert row["reason"] == ""
    assert row["vessel_area_density"] == pytest.approx(photo.vessels.sum() / photo.fov.sum())
    assert 0.03 < row["vessel_area_density"] < 0.25
    assert 1.2 < row["fd_mask"] < 1.8 and 1.05 < row["fd_skeleton"] < row["fd_mask"]
    assert row["fd_mask_r2"] > 0.95 and row["fd_skeleton_r2"] > 0.95
    # the generator draws vessels 1-7 px wide (anti-aliased, thresholded at half coverage)
    assert 1.0 <= row["width_p10_px"] <= row["width_median_px"] <= row["width_p90_px"] <= 10.0
    assert row["branch_points"] >= 10 and row["end_points"] >= 10 and row["segments"] >= 20
    assert row["segments"] <= 2 * row["branch_points"] + row["end_points"]
    assert 1.0 < row["tortuosity_dm"] < 1.2  # gently wandering vessels
    assert row["tortuosity_density_px"] >= 0
    length = row["skeleton_length_px"]
    assert length / row["vessel_area_density"] > 0  # lengths add up
    assert row["segment_length_mean_px"] * row["segments"] == pytest.approx(length, rel=1e-6)
    assert all(isinstance(row[name], float) for name in COLUMNS if name != "reason")


# -- bad input -------------------------------------------------------------------------------------
DEFINED = {"fov_area_px", "fov_diameter_px", "vessel_area_density"}


def ring_fov(n: int = 64) -> np.ndarray:
    return np.hypot(*np.mgrid[-n // 2:n // 2, -n // 2:n // 2]) < n // 2 - 2


@pytest.mark.parametrize("case, mask, fov, reason, defined", [
    ("empty mask", np.zeros((64, 64), bool), ring_fov(), "no vessel pixel",
     DEFINED | {"skeleton_length_px", "length_density_px", "length_density_norm", "segments",
                "branch_points", "end_points"}),
    ("no FOV", np.ones((64, 64), bool), np.zeros((64, 64), bool), "empty FOV", set()),
    ("one-pixel FOV", np.ones((64, 64), bool), np.pad([[True]], ((30, 33), (30, 33))),
     "FOV too small", DEFINED),
    ("all vessel", np.ones((64, 64), bool), ring_fov(), "covers the whole FOV", DEFINED),
    ("all vessel, whole image", np.ones((64, 64), bool), np.ones((64, 64), bool),
     "covers the whole FOV", DEFINED),
    ("empty image", np.zeros((0, 0), bool), np.zeros((0, 0), bool), "empty FOV", set()),
])
def test_bad_input_gives_nan_and_a_reason(case, mask, fov, reason, defined):
    row = measure(mask, fov, pixel_size_um=5.0)
    assert list(row) == list(COLUMNS)
    assert reason in row["reason"], case
    finite = defined | {name.replace("_px", "_um") for name in defined} | {"pixel_size_um"}
    for name in COLUMNS[:-1]:
        assert math.isfinite(row[name]) == (name in finite), (case, name, row[name])


def test_an_empty_mask_has_zero_density_and_no_segments():
    row = measure(np.zeros((64, 64), bool), ring_fov())
    assert row["vessel_area_density"] == 0 and row["segments"] == 0
    assert math.isnan(row["width_mean_px"]) and math.isnan(row["fd_mask"])


def test_mask_and_fov_of_different_shapes_is_an_error_naming_them():
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(5, 4\)"):
        measure(np.zeros((4, 5), bool), np.zeros((5, 4), bool))
    with pytest.raises(ValueError, match="2-D"):
        measure(np.zeros((4, 5, 3), bool), np.zeros((4, 5, 3), bool))
    with pytest.raises(ValueError, match="pixel_size_um"):
        measure(np.zeros((4, 5), bool), np.zeros((4, 5), bool), pixel_size_um=0.0)


def test_vessels_outside_the_fov_are_ignored():
    photo = generate_fundus(3, 256)
    noisy = photo.vessels | ~photo.fov
    assert measure(noisy, photo.fov) == measure(photo.vessels, photo.fov)


def test_specks_and_isolated_pixels():
    speck = np.zeros((64, 64), bool)
    speck[30, 30] = True
    row = measure(speck, full(64))
    assert row["segments"] == 0 and row["skeleton_length_px"] == 0
    assert "no segment" in row["reason"]


# -- figures and imports ---------------------------------------------------------------------------
@pytest.mark.parametrize("colour_by", ["width", "tortuosity"])
def test_centreline_figure(tmp_path, colour_by):
    photo = generate_fundus(0, 256)
    path = morphology.save_centreline_figure(tmp_path / f"{colour_by}.png", photo.image,
                                             photo.vessels, photo.fov, colour_by=colour_by,
                                             pixel_size_um=12.0, title="synthetic 0")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == [f"{colour_by}.png"]  # no temporary left
    values = morphology.centreline_values(photo.vessels, photo.fov, colour_by)
    finite = values[np.isfinite(values)]
    assert finite.size > 100 and finite.min() >= (1.0 if colour_by == "tortuosity" else 0.9)


def test_draw_centreline_on_an_axes_without_an_image():
    from matplotlib.figure import Figure

    photo = generate_fundus(1, 128)
    figure = Figure()
    shown = morphology.draw_centreline(figure.add_subplot(), None, photo.vessels, photo.fov)
    assert shown.get_array().count() > 0
    with pytest.raises(ValueError, match="colour_by"):
        morphology.centreline_values(photo.vessels, photo.fov, "colour")


def test_importing_the_module_leaves_skan_and_pyplot_unloaded():
    code = ("import sys, vesselseg.morphology; "
            "print('skan' in sys.modules, 'numba' in sys.modules, "
            "'matplotlib.pyplot' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False"]
