"""Streaming Keras metrics: exact values, accumulation, FOV, reset, empty masks."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from vesselseg.evaluation import Counts, scores_from_counts  # noqa: E402
from vesselseg.metrics import (  # noqa: E402
    DiceCoefficient,
    IoU,
    Precision,
    Recall,
    training_metrics,
)

METRICS = {"dice": DiceCoefficient, "iou": IoU, "precision": Precision, "recall": Recall}

# 8 pixels: truth and probabilities; at threshold 0.5 -> tp 3 (0.9, 0.5, 0.7), fn 1 (0.2),
# fp 2 (0.6, 0.99), tn 2
TRUTH = [1, 1, 1, 1, 0, 0, 0, 0]
PROBS = [0.9, 0.5, 0.7, 0.2, 0.6, 0.99, 0.1, 0.49]
EXPECTED = {"dice": 6 / 9, "iou": 3 / 6, "precision": 3 / 5, "recall": 3 / 4}


def batch(values, channels=None):
    array = np.asarray(values, np.float32).reshape(1, 2, 4, 1)
    if channels is None:
        return array
    fov = np.asarray(channels, np.float32).reshape(1, 2, 4, 1)
    return np.concatenate([array, fov], axis=-1)


def result(metric) -> float:
    return float(np.asarray(metric.result()))


@pytest.mark.parametrize("name", sorted(METRICS))
def test_exact_values(name):
    metric = METRICS[name]()
    metric.update_state(batch(TRUTH), batch(PROBS))
    assert result(metric) == pytest.approx(EXPECTED[name], abs=1e-12)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_threshold_is_inclusive_and_configurable(name):
    metric = METRICS[name](threshold=0.95)
    metric.update_state(batch(TRUTH), batch(PROBS))
    # only 0.99 (a false positive) is predicted: tp 0, fp 1, fn 4
    expected = {"dice": 0.0, "iou": 0.0, "precision": 0.0, "recall": 0.0}[name]
    assert result(metric) == pytest.approx(expected)
    assert metric.get_config()["threshold"] == 0.95


@pytest.mark.parametrize("name", sorted(METRICS))
def test_accumulates_over_updates(name):
    # the same 8 pixels split into 3 updates give the pooled value, not a mean of batch values
    metric = METRICS[name]()
    for part in (slice(0, 2), slice(2, 5), slice(5, 8)):
        y = np.asarray(TRUTH, np.float32)[part].reshape(1, 1, -1, 1)
        p = np.asarray(PROBS, np.float32)[part].reshape(1, 1, -1, 1)
        metric.update_state(y, p)
    assert result(metric) == pytest.approx(EXPECTED[name], abs=1e-12)
    assert float(metric.tp.numpy()) == 3
    assert float(metric.fp.numpy()) == 2
    assert float(metric.fn.numpy()) == 1


@pytest.mark.parametrize("name", sorted(METRICS))
def test_matches_numpy_evaluation(name):
    rng = np.random.default_rng(3)
    y = (rng.random((3, 16, 16, 1)) < 0.3).astype(np.float32)
    p = rng.random((3, 16, 16, 1)).astype(np.float32)
    fov = (rng.random((3, 16, 16, 1)) < 0.8).astype(np.float32)
    metric = METRICS[name]()
    metric.update_state(np.concatenate([y, fov], -1), p)
    inside = fov[..., 0] > 0
    predicted = p[..., 0][inside] >= 0.5
    labels = y[..., 0][inside] > 0
    tp = int(np.sum(predicted & labels))
    fp = int(np.sum(predicted & ~labels))
    fn = int(np.sum(~predicted & labels))
    scores = scores_from_counts(Counts(tp, fp, fn, int(inside.sum()) - tp - fp - fn))
    key = {"dice": "f1", "iou": "iou", "precision": "precision", "recall": "sensitivity"}[name]
    assert result(metric) == pytest.approx(scores[key], abs=1e-12)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_fov_channel_excludes_pixels(name):
    # outside the FOV: the missed vessel (0.2) and the false positive 0.99
    fov = [1, 1, 1, 0, 1, 0, 1, 1]
    metric = METRICS[name]()
    metric.update_state(batch(TRUTH, fov), batch(PROBS))
    # tp 3, fp 1, fn 0
    expected = {"dice": 6 / 7, "iou": 3 / 4, "precision": 3 / 4, "recall": 1.0}[name]
    assert result(metric) == pytest.approx(expected, abs=1e-12)
    # anything outside the FOV can change without effect
    other = METRICS[name]()
    flipped = [1 - t if f == 0 else t for t, f in zip(TRUTH, fov)]
    probs = [1 - p if f == 0 else p for p, f in zip(PROBS, fov)]
    other.update_state(batch(flipped, fov), batch(probs))
    assert result(other) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_reset(name):
    metric = METRICS[name]()
    metric.update_state(batch(TRUTH), batch(PROBS))
    metric.reset_state()
    assert float(metric.tp.numpy()) == float(metric.fp.numpy()) == float(metric.fn.numpy()) == 0
    metric.update_state(batch(TRUTH), batch(TRUTH))
    assert result(metric) == pytest.approx(1.0)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_empty_masks_are_defined(name):
    zeros = [0] * 8
    metric = METRICS[name]()
    assert result(metric) == 1.0  # nothing seen yet: nothing wrong
    metric.update_state(batch(zeros), batch([0.1] * 8))
    assert result(metric) == 1.0
    # empty truth with one false positive: 0 for every metric but recall (no vessel to miss)
    metric.update_state(batch(zeros), batch([0.0] * 7 + [0.8]))
    assert not np.isnan(result(metric))
    assert result(metric) == pytest.approx({"dice": 0.0, "iou": 0.0, "precision": 0.0,
                                            "recall": 1.0}[name])


@pytest.mark.parametrize("name", sorted(METRICS))
def test_nothing_predicted_while_vessels_exist(name):
    # an all-background model is neither precise nor sensitive
    metric = METRICS[name]()
    metric.update_state(batch(TRUTH), batch([0.0] * 8))
    assert result(metric) == 0.0


def test_empty_fov_is_defined():
    for cls in METRICS.values():
        metric = cls()
        metric.update_state(batch(TRUTH, [0] * 8), batch(PROBS))
        assert result(metric) == 1.0


def test_counts_stay_exact_beyond_float32():
    # float64 accumulators: 2**24 + 1 is not representable in float32
    metric = Recall()
    metric.tp.assign(2.0**24)
    metric.update_state(np.ones((1, 1, 1, 1), np.float32), np.ones((1, 1, 1, 1), np.float32))
    assert metric.tp.numpy() == 2**24 + 1
    assert metric.tp.dtype == "float64"


def test_training_metrics_and_serialisation():
    metrics = training_metrics()
    assert [m.name for m in metrics] == ["dice", "iou", "precision", "recall"]
    for metric in metrics:
        config = keras.saving.serialize_keras_object(metric)
        restored = keras.saving.deserialize_keras_object(config)
        assert type(restored) is type(metric)
        assert restored.threshold == metric.threshold


def test_metrics_in_a_compiled_model():
    # graph mode (model.evaluate) gives the same pooled figures as eager updates
    inputs = keras.Input((2, 4, 1))
    model = keras.Model(inputs, keras.layers.Identity()(inputs))
    model.compile(loss="mse", metrics=training_metrics())
    y_true = np.concatenate([batch(TRUTH, [1] * 8)] * 3)
    y_pred = np.concatenate([batch(PROBS)] * 3)
    results = model.evaluate(y_pred, y_true, batch_size=1, verbose=0, return_dict=True)
    for name, expected in EXPECTED.items():
        assert results[name] == pytest.approx(expected, abs=1e-6)
