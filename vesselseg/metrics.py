"""Streaming Keras training metrics, thresholded at 0.5 and counted inside the FOV.

They accumulate true/false positive and false negative counts over an epoch (float64, so large
epochs stay exact) and derive Dice, IoU, precision or recall from them: the epoch figure is pooled
over pixels, the same protocol as the final evaluation.
"""
from __future__ import annotations

import keras
from keras import ops

from .losses import split_target


class _ConfusionMetric(keras.metrics.Metric):
    def __init__(self, name: str, threshold: float = 0.5, **kwargs):
        super().__init__(name=name, **kwargs)
        self.threshold = threshold
        self.tp = self.add_variable(shape=(), initializer="zeros", name="tp", dtype="float64")
        self.fp = self.add_variable(shape=(), initializer="zeros", name="fp", dtype="float64")
        self.fn = self.add_variable(shape=(), initializer="zeros", name="fn", dtype="float64")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y, fov, p = split_target(y_true, y_pred)
        predicted = ops.cast(p >= self.threshold, "float32") * fov
        y = y * fov
        self.tp.assign_add(ops.cast(ops.sum(predicted * y), "float64"))
        self.fp.assign_add(ops.cast(ops.sum(predicted * (1.0 - y)), "float64"))
        self.fn.assign_add(ops.cast(ops.sum((1.0 - predicted) * y), "float64"))

    def reset_state(self):
        for variable in (self.tp, self.fp, self.fn):
            variable.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}

    @staticmethod
    def _ratio(numerator, denominator):
        # An empty denominator means nothing to get wrong: defined as 1, never NaN.
        return ops.where(denominator > 0, numerator / ops.maximum(denominator, 1e-12), 1.0)


@keras.saving.register_keras_serializable("vesselseg")
class DiceCoefficient(_ConfusionMetric):
    def __init__(self, name: str = "dice", **kwargs):
        super().__init__(name=name, **kwargs)

    def result(self):
        return self._ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)


@keras.saving.register_keras_serializable("vesselseg")
class IoU(_ConfusionMetric):
    def __init__(self, name: str = "iou", **kwargs):
        super().__init__(name=name, **kwargs)

    def result(self):
        return self._ratio(self.tp, self.tp + self.fp + self.fn)


@keras.saving.register_keras_serializable("vesselseg")
class Precision(_ConfusionMetric):
    def __init__(self, name: str = "precision", **kwargs):
        super().__init__(name=name, **kwargs)

    def result(self):
        # Nothing predicted: 1 only if there was nothing to find either, else 0 (an all-background
        # model is not "precise"); the same rule as evaluation.scores_from_counts.
        nothing_wrong = ops.where((self.fp == 0) & (self.fn == 0), 1.0, 0.0)
        denominator = self.tp + self.fp
        return ops.where(denominator > 0, self.tp / ops.maximum(denominator, 1e-12),
                         ops.cast(nothing_wrong, self.tp.dtype))


@keras.saving.register_keras_serializable("vesselseg")
class Recall(_ConfusionMetric):
    def __init__(self, name: str = "recall", **kwargs):
        super().__init__(name=name, **kwargs)

    def result(self):
        return self._ratio(self.tp, self.tp + self.fn)


def training_metrics() -> list[keras.metrics.Metric]:
    return [DiceCoefficient(), IoU(), Precision(), Recall()]
