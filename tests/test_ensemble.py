"""Joining two runs into one averaged model: its maps, its storage, its threshold, refusals."""
from __future__ import annotations

import json

import numpy as np
import pytest
from run_fixtures import tiny_config

from experiments.ensemble import join_runs, main
from vesselseg.datasets import generate_fundus
from vesselseg.errors import ConfigError
from vesselseg.inference import Segmenter


@pytest.fixture(scope="module")
def other_run(synthetic_preprocessed, tmp_path_factory):
    """A second tiny run, trained apart from `tiny_run` (another seed)."""
    from vesselseg.train import train

    runs = tmp_path_factory.mktemp("other_runs")
    return train(tiny_config(synthetic_preprocessed, runs, seed=1), progress=False).path


def _probability(run, image, fov):
    return Segmenter.from_run(run, precision="float32").predict(image, fov).probability


def test_the_joined_model_averages_its_members_maps(tiny_run, other_run, tmp_path):
    run = join_runs(str(tiny_run), str(other_run), runs_dir=tmp_path, storage="float32")
    fundus = generate_fundus(7, 128)
    image, fov = fundus.image, fundus.fov
    expected = (_probability(tiny_run, image, fov) + _probability(other_run, image, fov)) / 2
    np.testing.assert_allclose(_probability(run, image, fov), expected, atol=1e-5)

    assert json.loads((run / "config.json").read_text())["architecture"] == "unet_pair"
    record = json.loads((run / "ensemble.json").read_text())
    assert [member["seed"] for member in record["members"]] == [0, 1]
    status = json.loads((run / "status.json").read_text())
    threshold = json.loads((run / "threshold.json").read_text())
    assert status["state"] == "finished" and status["threshold"] == threshold["threshold"]
    members = json.loads((tiny_run / "threshold.json").read_text())["validation_images"]
    assert threshold["validation_images"] == members


def test_float16_storage_halves_the_file_and_keeps_the_maps(tiny_run, other_run, tmp_path):
    full = join_runs(str(tiny_run), str(other_run), runs_dir=tmp_path / "a", storage="float32")
    half = join_runs(str(tiny_run), str(other_run), runs_dir=tmp_path / "b")
    from vesselseg.backends import load_keras_model

    stored = [sum(np.asarray(w).nbytes for w in load_keras_model(run / "best.keras").weights)
              for run in (full, half)]
    assert stored[1] * 2 == stored[0]
    fundus = generate_fundus(8, 128)
    image, fov = fundus.image, fundus.fov
    np.testing.assert_allclose(_probability(half, image, fov), _probability(full, image, fov),
                               atol=2e-3)
    # it computes in float32 unless asked otherwise, not in its storage dtype
    assert Segmenter.from_run(half).compute_precision == "float32"


def test_members_of_another_shape_are_refused(synthetic_preprocessed, tiny_run, tmp_path):
    from vesselseg.train import train

    wider = train(tiny_config(synthetic_preprocessed, tmp_path / "runs", base_filters=8),
                  progress=False).path
    with pytest.raises(ConfigError, match="base_filters differs"):
        join_runs(str(tiny_run), str(wider), runs_dir=tmp_path / "joined")
    assert not (tmp_path / "joined").exists()


def test_a_failure_while_joining_leaves_no_folder(tiny_run, other_run, tmp_path, monkeypatch):
    import vesselseg.calibrate

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(vesselseg.calibrate, "choose_threshold", broken)
    with pytest.raises(OSError):
        join_runs(str(tiny_run), str(other_run), runs_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cli_joins_and_reports_bad_members(tiny_run, other_run, tmp_path, capsys):
    assert main([str(tiny_run), str(other_run), "--runs-dir", str(tmp_path),
                 "--name", "pair"]) == 0
    assert "threshold" in capsys.readouterr().out
    assert [p.name.endswith("_pair") for p in tmp_path.iterdir()] == [True]
    assert main([str(tiny_run), str(tmp_path / "missing"), "--runs-dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "ensemble member" in error and "missing" in error


def test_a_joined_run_exports_and_runs_as_tflite(tiny_run, other_run, tmp_path):
    """The pair is one Keras graph: the export's own check holds it to the Keras model, and
    the tflite backend gives the same maps."""
    from vesselseg.export import export_run

    run = join_runs(str(tiny_run), str(other_run), runs_dir=tmp_path)
    export_run(run, "tflite")
    fundus = generate_fundus(9, 128)
    keras_map = Segmenter.from_run(run).predict(fundus.image, fundus.fov).probability
    tflite_map = Segmenter.from_run(run, backend="tflite").predict(fundus.image,
                                                                   fundus.fov).probability
    np.testing.assert_allclose(tflite_map, keras_map, atol=1e-3)


def test_unet_pair_averages_two_unets_probabilities():
    """Random weights with valid batch norm statistics (positive variances): the outputs are
    finite, so the comparisons below can fail."""
    import keras

    from experiments.ensemble import pair_weights
    from vesselseg.model import folded_batch_norm_weights, get_model, layer_weights
    from vesselseg.model import set_layer_weights as set_weights_by_name

    tiny = {"base_filters": 4, "depth": 2}
    rng = np.random.default_rng(0)
    members = [get_model("unet", batch_norm=True, **tiny) for _ in range(2)]
    for member in members:
        for layer in member.layers:
            values = [rng.normal(0, 0.5, w.shape).astype("float32") for w in layer.get_weights()]
            if isinstance(layer, keras.layers.BatchNormalization):  # gamma, beta, mean, var
                values[3] = rng.uniform(0.5, 1.5, values[3].shape).astype("float32")
            if values:
                layer.set_weights(values)
    pair = get_model("unet_pair", batch_norm=True, **tiny)
    assert pair.count_params() == 2 * members[0].count_params()
    set_weights_by_name(pair, pair_weights(*(layer_weights(m) for m in members)))
    image = rng.random((1, 32, 32, 3), dtype=np.float32)
    first, second = (np.asarray(m(image)) for m in members)
    expected = (first + second) / 2
    assert np.isfinite(expected).all() and expected.std() > 1e-4
    np.testing.assert_allclose(np.asarray(pair(image)), expected, atol=1e-6)
    assert not np.allclose(first, expected, atol=1e-3)
    # batch norm folds per member, as for one U-Net
    folded = get_model("unet_pair", batch_norm=False, **tiny)
    set_weights_by_name(folded, folded_batch_norm_weights(pair))
    np.testing.assert_allclose(np.asarray(folded(image)), expected, atol=1e-5)
