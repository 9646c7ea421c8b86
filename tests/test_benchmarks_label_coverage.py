"""The label-coverage benchmark: what the shrink to the model size does to thin vessels."""
from __future__ import annotations

import numpy as np

from benchmarks.label_coverage import label_coverage, main


def lines_photo(size: int) -> tuple[np.ndarray, np.ndarray]:
    """A square photo with a full FOV: 1-px vertical lines every 40 px, and one 17-px band."""
    annotation = np.zeros((size, size), bool)
    annotation[:, 20:size - 20:40] = True
    annotation[:, size // 2 - 8:size // 2 + 9] = True
    return annotation, np.ones((size, size), bool)


def test_a_four_times_shrink_loses_capillaries_from_binary_labels_but_not_soft_ones():
    counts, kept, soft = label_coverage(*lines_photo(2048))
    assert counts[0] > 0 and counts[2] > 0  # 1-2 px lines and a 5+ px band
    assert kept[0] / counts[0] < 0.05  # a quarter-pixel line never covers half a pixel
    assert 0.15 < soft[0] / counts[0] < 0.35  # about its coverage, a quarter
    assert kept[2] / counts[2] > 0.9


def test_near_the_model_size_nearly_every_label_survives():
    counts, kept, soft = label_coverage(*lines_photo(512))  # shrunk only by the crop margin
    assert (kept[counts > 0] / counts[counts > 0] > 0.99).all()
    assert soft[0] / counts[0] > 0.5  # spread over two model pixels, then interpolated back


def test_no_dataset_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["--datasets", str(tmp_path)]) == 2
    assert "holds none of DRIVE, CHASEDB1, HRF" in capsys.readouterr().err
