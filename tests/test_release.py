"""Releasing a run as the package's model (experiments.release): the weights without the
optimizer state, the run's records, the model card kept; an unfinished run is refused."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from experiments.release import main, ship
from vesselseg.datasets import generate_fundus
from vesselseg.inference import Segmenter


def test_a_shipped_run_predicts_like_the_run_and_keeps_the_model_card(tiny_run, tmp_path):
    target = tmp_path / "pretrained"
    target.mkdir()
    (target / "MODEL_CARD.md").write_text("card")
    (target / "old.keras").write_text("an older model's file")
    assert ship(tiny_run, target) == target
    names = sorted(p.name for p in target.iterdir())
    assert names == ["MODEL_CARD.md", "best.keras", "config.json", "history.csv",
                     "status.json", "threshold.json"]
    assert (target / "best.keras").stat().st_size < (tiny_run / "best.keras").stat().st_size
    fundus = generate_fundus(4, 128)
    shipped = Segmenter.from_run(target).predict(fundus.image, fundus.fov)
    original = Segmenter.from_run(tiny_run).predict(fundus.image, fundus.fov)
    np.testing.assert_allclose(shipped.probability, original.probability, atol=1e-6)
    assert shipped.threshold == original.threshold
    assert not target.with_name("pretrained.part").exists()


def test_an_unfinished_run_is_not_released(tiny_run, tmp_path, capsys):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "state": "running"}))
    target = tmp_path / "pretrained"
    assert main([str(run), "--target", str(target)]) == 1
    assert "not finished" in capsys.readouterr().err and not target.exists()
    with pytest.raises(Exception, match="not finished"):
        ship(run, target)
