"""benchmarks.eval_resources: which photos it takes, and its options (the measurement itself
runs the real command on real photos: a benchmark, not a test)."""
from __future__ import annotations

import pytest

from benchmarks.eval_resources import _photos, build_parser


def test_it_takes_the_first_photos_in_order_and_refuses_too_few(tmp_path):
    (tmp_path / "images").mkdir()
    for name in ("b.png", "a.jpg", "notes.txt", "c.tif"):
        (tmp_path / "images" / name).write_bytes(b"")
    assert [p.name for p in _photos(tmp_path, 2)] == ["a.jpg", "b.png"]
    with pytest.raises(SystemExit, match="only 3 photos"):
        _photos(tmp_path, 4)


def test_defaults_measure_twelve_hrf_photos_with_the_measurements():
    args = build_parser().parse_args([])
    assert args.photos == 12 and args.source.name == "HRF"
    assert not args.no_morphology and not args.morphology_cost
