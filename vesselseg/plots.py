"""Figures: learning curves, comparison panels, ROC / precision-recall curves, overlays."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .io import atomic_path


def new_figure(columns: int, size: tuple[float, float]) -> tuple[Figure, list]:
    """A figure and its axes from matplotlib's object API: no pyplot, so the user's own backend
    and open figures are never touched (and nothing needs closing)."""
    figure = Figure(figsize=size)
    axes = figure.subplots(1, columns, squeeze=False)[0]
    return figure, list(axes)


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Write a figure atomically (the format from the suffix, PNG by default)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=110, bbox_inches="tight")
    return path


def learning_curves(history: pd.DataFrame, path: str | Path) -> Path:
    """Training/validation loss and validation Dice per epoch."""
    figure, (left, right) = new_figure(2, (11, 4))
    epochs = history["epoch"] + 1
    left.plot(epochs, history["loss"], label="training loss")
    if "val_loss" in history:
        left.plot(epochs, history["val_loss"], label="validation loss")
    left.set_xlabel("epoch")
    left.set_ylabel("loss")
    left.legend()
    left.grid(alpha=0.3)
    for column, label in (("dice", "training Dice"), ("val_dice", "validation Dice")):
        if column in history:
            right.plot(epochs, history[column], label=label)
    right.set_xlabel("epoch")
    right.set_ylabel("Dice (threshold 0.5, inside FOV)")
    right.set_ylim(0, 1)
    right.legend()
    right.grid(alpha=0.3)
    figure.suptitle("Learning curves")
    return save_figure(figure, path)


def error_overlay(prediction: np.ndarray, truth: np.ndarray, fov: np.ndarray | None) -> np.ndarray:
    """RGB map: true positives white, false positives red, false negatives blue."""
    out = np.zeros((*prediction.shape, 3), dtype=np.uint8)
    inside = np.ones(prediction.shape, bool) if fov is None else fov
    out[prediction & truth & inside] = (255, 255, 255)
    out[prediction & ~truth & inside] = (255, 40, 40)
    out[~prediction & truth & inside] = (40, 120, 255)
    return out


def comparison_panel(image: np.ndarray, truth: np.ndarray, probability: np.ndarray,
                     prediction: np.ndarray, fov: np.ndarray | None, title: str,
                     path: str | Path) -> Path:
    """image | annotation | probability | prediction with FP (red) and FN (blue)."""
    figure, axes = new_figure(4, (16, 4.4))
    panels = [(image, "image", None), (truth, "annotation", "gray"),
              (probability, "probability", "magma"),
              (error_overlay(prediction, truth, fov), "prediction: TP white, FP red, FN blue",
               None)]
    for axis, (data, label, cmap) in zip(axes, panels):
        axis.imshow(data, cmap=cmap, vmin=0 if cmap else None, vmax=1 if cmap else None)
        axis.set_title(label, fontsize=10)
        axis.axis("off")
    figure.suptitle(title)
    return save_figure(figure, path)


def roc_pr_curves(curves: dict[str, np.ndarray], auc_roc: float, auc_pr: float,
                  path: str | Path, title: str = "pooled over the test images") -> Path:
    figure, (left, right) = new_figure(2, (10, 4.5))
    left.plot(np.concatenate([[0], curves["fpr"]]), np.concatenate([[0], curves["tpr"]]))
    left.plot([0, 1], [0, 1], "--", color="gray", lw=0.8)
    left.set_xlabel("false positive rate (1 - specificity)")
    left.set_ylabel("true positive rate (sensitivity)")
    left.set_title(f"ROC, AUC = {auc_roc:.4f}")
    right.plot(curves["recall"], curves["precision"])
    right.set_xlabel("recall (sensitivity)")
    right.set_ylabel("precision")
    right.set_title(f"Precision-recall, AP = {auc_pr:.4f}")
    for axis in (left, right):
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1.01)
        axis.grid(alpha=0.3)
    figure.suptitle(f"Pixels inside the FOV, native resolution, {title}")
    return save_figure(figure, path)


def overlay(image: np.ndarray, mask: np.ndarray, colour=(0, 255, 80), alpha: float = 0.6):
    """The photo (HxWx3 uint8) with the predicted vessels painted on it."""
    out = image.copy()  # only the vessel pixels are blended: a few percent of the photo
    painted = (1 - alpha) * image[mask].astype(np.float32) + alpha * np.asarray(colour, np.float32)
    out[mask] = painted.clip(0, 255).astype(np.uint8)
    return out
