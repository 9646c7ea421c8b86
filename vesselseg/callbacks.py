"""Training schedule pieces that Keras does not have: a cosine rate that follows the wall clock,
and a stop before the next epoch would overrun a time budget."""
from __future__ import annotations

import math
import time

import keras

from .config import TrainConfig


def cosine_learning_rate(config: TrainConfig, epoch: int, elapsed_seconds: float) -> float:
    """Cosine decay from learning_rate to min_learning_rate over whichever limit comes first, the
    epochs or the wall-clock budget: on a CPU a budgeted run stops long before `epochs`, and an
    epoch-based decay would never reach its low-rate end; on a faster machine the same recipe
    runs out of epochs first, and a time-based decay would stop it still at a high rate."""
    progress = epoch / max(1, config.epochs - 1)
    if config.budget_minutes:
        progress = max(progress, elapsed_seconds / (config.budget_minutes * 60.0))
    progress = min(1.0, max(0.0, progress))
    return config.min_learning_rate + 0.5 * (config.learning_rate - config.min_learning_rate) * (
        1 + math.cos(math.pi * progress))


class WallClockBudget(keras.callbacks.Callback):
    """Stop before the next epoch would overrun a wall-clock budget (`start`: time.monotonic()
    when training began, earlier epochs of a resumed run included)."""

    def __init__(self, seconds: float, start: float):
        super().__init__()
        self.seconds, self.start, self.epoch_start = seconds, start, start
        self.longest = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        now = time.monotonic()
        self.longest = max(self.longest, now - self.epoch_start)
        if now - self.start + self.longest > self.seconds:
            self.model.stop_training = True


class StopOnNonFiniteWeights(keras.callbacks.Callback):
    """Stop training once any weight (batch-norm statistics included) is NaN or infinite: a
    Dice loss can stay finite while the network has diverged, which Keras's TerminateOnNaN does
    not see. `epoch` records the first such epoch (1-based), None while all is well."""

    def __init__(self):
        super().__init__()
        self.epoch: int | None = None

    def on_epoch_end(self, epoch, logs=None):
        if self.epoch is None and not weights_are_finite(self.model):
            self.epoch = epoch + 1
            self.model.stop_training = True


def weights_are_finite(model) -> bool:
    import numpy as np

    return all(np.isfinite(np.asarray(weight, dtype=np.float32)).all()
               for weight in model.weights)
