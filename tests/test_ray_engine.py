"""The Ray engine against the single-process path: a local Ray with 2 workers (started once for
the module), a few small synthetic photos and the tiny trained run."""
from __future__ import annotations

import sys
from functools import partial

import numpy as np
import pandas as pd
import pytest

from vesselseg.eval import collect_images, main
from vesselseg.eval import segment_images as segment_locally
from vesselseg.io import read_image

ray = pytest.importorskip("ray", reason='the Ray engine needs pip install "vesselseg[ray]"')

PHOTOS = 5


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the whole module (the engine uses a Ray that is already running)."""
    import logging

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, object_store_memory=100 * 2**20, include_dashboard=False,
                 log_to_driver=False, logging_level=logging.ERROR)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Five synthetic photos of 96 px and one file that is not a photo."""
    from vesselseg.datasets import write_synthetic_dataset

    root = tmp_path_factory.mktemp("cohort")
    folder = write_synthetic_dataset(root / "raw", count=PHOTOS, size=96, seed=7) / "images"
    (folder / "zz_broken.png").write_bytes(b"not a photo")
    return folder


def _rows(out) -> pd.DataFrame:
    """results.csv by photo; a reader's message may name a buffer's address (0x7f...), which
    differs between processes."""
    rows = pd.read_csv(out / "results.csv").sort_values("image").reset_index(drop=True)
    rows["error"] = rows["error"].str.replace(r"0x[0-9a-f]+", "0x", regex=True)
    return rows


def _same_files(a, b) -> list[str]:
    names = sorted(p.name for p in a.glob("*.png"))
    assert names == sorted(p.name for p in b.glob("*.png"))
    for name in names:
        assert np.array_equal(read_image(a / name), read_image(b / name)), name
    return names


@pytest.fixture(scope="module")
def both_engines(local_ray, tiny_run, cohort, tmp_path_factory):
    """The same eval command (vessel measurements on) run by each engine."""
    root = tmp_path_factory.mktemp("engines")
    common = [str(cohort), "--run", str(tiny_run), "-q"]
    codes = (main([*common, "--out", str(root / "local")]),
             main([*common, "--out", str(root / "ray"), "--engine", "ray", "--workers", "2"]))
    return root / "local", root / "ray", codes


def test_ray_rows_and_masks_are_the_single_process_ones(both_engines):
    local, on_ray, codes = both_engines
    assert codes == (1, 1)  # the broken file fails in both: exit 1, some photos failed
    rows, ray_rows = _rows(local), _rows(on_ray)
    assert list(ray_rows.columns) == list(rows.columns)
    pd.testing.assert_frame_equal(ray_rows, rows)  # every column, measurements included
    assert len(_same_files(local, on_ray)) == 3 * PHOTOS
    assert not list(on_ray.rglob("*.part"))


def test_a_broken_photo_is_one_failed_row(both_engines):
    _, on_ray, _ = both_engines
    rows = _rows(on_ray)
    failed = rows[rows["status"] == "failed"]
    assert len(rows) == PHOTOS + 1 and rows["image"].is_unique
    assert len(failed) == 1 and failed["image"].iloc[0].endswith("zz_broken.png")
    assert "zz_broken.png" in failed["error"].iloc[0]


def test_a_killed_worker_is_retried_and_every_photo_written_once(local_ray, tiny_run, cohort,
                                                                 tmp_path):
    """One worker SIGKILLs itself after writing a photo's files (RayOptions.kill_marker); Ray
    restarts it and retries its task. Resume on top: two photos were done by an earlier run."""
    from vesselseg.eval import MorphologyOptions
    from vesselseg.inference import Segmenter
    from vesselseg.ray_engine import RayOptions
    from vesselseg.ray_engine import segment_images as segment_on_ray

    inputs = collect_images([cohort])
    out, marker = tmp_path / "out", tmp_path / "killed"
    plain = MorphologyOptions(enabled=False)
    segment_locally(Segmenter.from_run(tiny_run), inputs.images[:2], out, morphology=plain)
    before = (out / "synthetic_000_mask.png").stat().st_mtime_ns
    results = segment_on_ray(partial(Segmenter.from_run, tiny_run), inputs, out,
                             RayOptions(workers=2, kill_marker=str(marker)), resume=True,
                             morphology=plain)
    assert marker.exists(), "no worker was killed: the test proves nothing"
    assert sorted(str(r.path) for r in results) == sorted(map(str, inputs.images[2:]))
    rows = _rows(out)
    assert sorted(rows["image"]) == sorted(map(str, inputs.images))  # each photo once
    assert (rows["status"] == "done").sum() == PHOTOS
    assert (out / "synthetic_000_mask.png").stat().st_mtime_ns == before  # resumed, not redone
    reference = tmp_path / "reference"
    segment_locally(Segmenter.from_run(tiny_run), inputs, reference, morphology=plain)
    pd.testing.assert_frame_equal(rows, _rows(reference))
    _same_files(reference, out)
    assert not list(out.rglob("*.part"))


def test_ray_options_are_checked_before_any_work(tmp_path, capsys, monkeypatch):
    photo = tmp_path / "photo.png"
    assert main([str(photo), "--workers", "2", "--out", str(tmp_path / "a")]) == 2
    assert "--engine ray" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert main([str(photo), "--engine", "ray", "--out", str(tmp_path / "b")]) == 2
    assert 'pip install "vesselseg[ray]"' in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
