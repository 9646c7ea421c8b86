"""The morphology agreement benchmark: ICC(2,1) and Bland-Altman figures on known answers (no
model, no dataset)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from benchmarks.morphology import (
    HUMAN,
    MEASURES,
    MODEL,
    REFERENCE,
    agreement,
    agreement_table,
    bland_altman_figure,
    icc_2_1,
    main,
    markdown_table,
    pearson_r,
)

#: Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges.
SHROUT_FLEISS = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8],
                          [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]], float)


def test_icc_2_1_of_the_shrout_fleiss_example():
    """Their mean squares: targets BMS = 11.24, judges JMS = 32.49, residual EMS = 1.02, so
    ICC(2,1) = (11.24 - 1.02) / (11.24 + 3 x 1.02 + 4 (32.49 - 1.02) / 6) = 0.29 (their Table 4;
    ICC(3,1), which ignores the judges' bias, would be 0.71)."""
    assert icc_2_1(SHROUT_FLEISS) == pytest.approx(0.2898, abs=5e-4)


def test_icc_2_1_of_a_hand_computed_two_rater_example():
    """Rater B = rater A + 1 on 4 subjects 1..4: MSR = 2 x 5 / 3 = 10/3, MSC = 4 x 0.5 = 2,
    MSE = 0, so ICC(2,1) = (10/3) / (10/3 + 2 x 2 / 4) = 10/13: the bias costs agreement, while
    Pearson r stays 1."""
    a = np.array([1.0, 2.0, 3.0, 4.0])
    assert icc_2_1(np.stack([a, a + 1], axis=1)) == pytest.approx(10 / 13)
    assert pearson_r(a, a + 1) == pytest.approx(1.0)
    assert icc_2_1(np.stack([a, a], axis=1)) == pytest.approx(1.0)
    assert icc_2_1(np.stack([a, a[::-1]], axis=1)) < 0  # disagreement


def test_icc_edge_cases_are_nan_without_warnings():
    with np.errstate(all="raise"):
        assert math.isnan(icc_2_1(np.ones((5, 2))))  # no variance at all
        assert math.isnan(icc_2_1(np.array([[1.0, 2.0]])))  # one subject
        assert math.isnan(pearson_r(np.ones(4), np.arange(4.0)))
        rows_with_nan = np.array([[1.0, 1.5], [2.0, np.nan], [3.0, 3.5], [4.0, 4.5]])
        assert icc_2_1(rows_with_nan) == pytest.approx(icc_2_1(rows_with_nan[[0, 2, 3]]))


def test_agreement_gives_bias_and_limits_of_agreement():
    reference = np.array([1.0, 2.0, 3.0, 4.0, np.nan])
    other = np.array([1.5, 2.0, 3.5, 4.0, 7.0])
    found = agreement(reference, other)
    assert found["n"] == 4
    assert found["mean_difference"] == pytest.approx(0.25)
    spread = np.std([0.5, 0.0, 0.5, 0.0], ddof=1)
    assert found["loa_low"] == pytest.approx(0.25 - 1.96 * spread)
    assert found["loa_high"] == pytest.approx(0.25 + 1.96 * spread)
    assert math.isnan(agreement(np.array([1.0]), np.array([2.0]))["icc"])


def fake_measurements(name: str, second: bool, images: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for index in range(images):
        truth = {m: 1.0 + index + rng.normal(0, 0.1) for m in MEASURES}
        raters = [REFERENCE, MODEL] + ([HUMAN] if second else [])
        for rater in raters:
            noise = 0.0 if rater == REFERENCE else (0.05 if rater == HUMAN else 0.3)
            rows.append({"dataset": name, "id": f"{name}_{index}", "rater": rater,
                         **{m: v + rng.normal(0, noise) for m, v in truth.items()}})
    return pd.DataFrame(rows)


def test_tables_and_figures_with_and_without_a_second_annotator(tmp_path):
    measurements = {"drive": fake_measurements("drive", True),
                    "hrf": fake_measurements("hrf", False)}
    agreements = {name: agreement_table(m) for name, m in measurements.items()}
    assert len(agreements["drive"]) == 2 * len(MEASURES)
    assert set(agreements["hrf"]["rater"]) == {MODEL}
    table = markdown_table(agreements)
    assert table.count("\n") == 2 + 2 * len(MEASURES)
    assert "| DRIVE (6) | fd_mask |" in table and "not reached |" in table
    assert "| HRF (6) | fd_mask |" in table and table.rstrip().endswith("n/a |")
    path = bland_altman_figure("fd_mask", measurements, agreements, tmp_path / "ba.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_a_missing_dataset_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["--datasets", str(tmp_path), "--only", "drive", "--out",
                 str(tmp_path / "out")]) == 1
    assert "DRIVE: dataset folder not found" in capsys.readouterr().err
