"""Evaluation metrics in NumPy on probability maps, following the field's rigorous protocol:
native resolution, pixels inside the FOV only, per image and pooled over a set.

Counts are int64 (an 8-Mpx HRF image cannot overflow). Edge cases are defined, never NaN:
a ratio whose denominator is empty is 1 when there was nothing to get wrong (e.g. precision with
no vessel predicted and none present) and 0 otherwise. Only AUC-ROC / AUC-PR of an image with a
single class are undefined; they are NaN in that image's row and skipped by means, while pooled
figures are computed from the pooled pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
from skimage.morphology import skeletonize

METRIC_NAMES = ("accuracy", "sensitivity", "specificity", "precision", "f1", "iou", "mcc",
                "auc_roc", "auc_pr", "cldice")
HISTOGRAM_BINS = 1 << 16  # pooled curves: probabilities quantised to 1/65535
#: Reference vessel pixels by the local width of their vessel, in native pixels (see
#: `vessel_calibre`): thin capillaries are where a model's sensitivity and AUC-ROC are lost.
CALIBRES = ("1-2 px", "3-4 px", "5+ px")


@dataclass(frozen=True)
class Counts:
    tp: int
    fp: int
    fn: int
    tn: int

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn,
                      self.tn + other.tn)


def confusion(predicted: np.ndarray, truth: np.ndarray) -> Counts:
    """Confusion counts of two boolean vectors (already restricted to the FOV)."""
    predicted = predicted.astype(bool, copy=False)
    truth = truth.astype(bool, copy=False)
    tp = int(np.count_nonzero(predicted & truth))
    fp = int(np.count_nonzero(predicted)) - tp
    fn = int(np.count_nonzero(truth)) - tp
    return Counts(tp, fp, fn, int(predicted.size) - tp - fp - fn)


def _ratio(numerator: float, denominator: float, empty: float) -> float:
    return float(numerator) / float(denominator) if denominator > 0 else empty


def scores_from_counts(c: Counts) -> dict[str, float]:
    """Accuracy, sensitivity, specificity, precision, F1, IoU and MCC from counts."""
    total = c.tp + c.fp + c.fn + c.tn
    nothing_wrong = 1.0 if c.fp == 0 and c.fn == 0 else 0.0
    denominator = math.sqrt(float(c.tp + c.fp) * float(c.tp + c.fn) * float(c.tn + c.fp)
                            * float(c.tn + c.fn))
    mcc = ((float(c.tp) * c.tn - float(c.fp) * c.fn) / denominator if denominator > 0
           else nothing_wrong)
    return {
        "accuracy": _ratio(c.tp + c.tn, total, 1.0),
        "sensitivity": _ratio(c.tp, c.tp + c.fn, 1.0),
        "specificity": _ratio(c.tn, c.tn + c.fp, 1.0),
        "precision": _ratio(c.tp, c.tp + c.fp, nothing_wrong),
        "f1": _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn, 1.0),
        "iou": _ratio(c.tp, c.tp + c.fp + c.fn, 1.0),
        "mcc": mcc,
    }


def _curve_from_sorted(tps: np.ndarray, fps: np.ndarray) -> tuple[float, float]:
    """AUC-ROC (trapezoid) and average precision from cumulative counts at each threshold."""
    positives, negatives = tps[-1], fps[-1]
    if positives == 0 or negatives == 0:
        return math.nan, math.nan
    tpr = np.concatenate([[0.0], tps / positives])
    fpr = np.concatenate([[0.0], fps / negatives])
    # trapezoid rule written out: np.trapezoid only exists from NumPy 2.0 (setup.cfg allows 1.24)
    auc_roc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2.0)
    precision = tps / np.maximum(tps + fps, 1)
    recall = tps / positives
    auc_pr = float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))
    return auc_roc, auc_pr


def ranking_scores(probability: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Exact AUC-ROC and average precision (as scikit-learn computes them) of 1-D inputs.

    NaN for both when only one class is present (including no pixel at all). Scores are ranked in
    their own floating dtype, as scikit-learn does, so ties are the same ones it sees.
    """
    truth = np.asarray(truth).astype(bool, copy=False)
    positives = int(np.count_nonzero(truth))
    if positives == 0 or positives == truth.size:
        return math.nan, math.nan
    probability = np.asarray(probability)
    if not np.issubdtype(probability.dtype, np.floating):
        probability = probability.astype(np.float64)
    order = np.argsort(-probability, kind="stable")
    scores = probability[order]
    labels = truth[order].astype(np.int64)
    distinct = np.flatnonzero(np.diff(scores)) if scores.size > 1 else np.array([], dtype=int)
    ends = np.concatenate([distinct, [scores.size - 1]])
    tps = np.cumsum(labels)[ends]
    fps = (ends + 1) - tps
    return _curve_from_sorted(tps.astype(np.float64), fps.astype(np.float64))


def cldice_counts(predicted: np.ndarray, truth: np.ndarray, fov: np.ndarray) -> np.ndarray:
    """[skeleton(pred) in truth, |skeleton(pred)|, skeleton(truth) in pred, |skeleton(truth)|]."""
    pred_skeleton = skeletonize(predicted) & fov
    truth_skeleton = skeletonize(truth) & fov
    return np.array([np.count_nonzero(pred_skeleton & truth), np.count_nonzero(pred_skeleton),
                     np.count_nonzero(truth_skeleton & predicted),
                     np.count_nonzero(truth_skeleton)], dtype=np.int64)


def cldice_from_counts(counts: np.ndarray) -> float:
    """Harmonic mean of topology precision and topology sensitivity (1 when both are empty)."""
    t_prec = _ratio(counts[0], counts[1], 1.0)
    t_sens = _ratio(counts[2], counts[3], 1.0)
    return 0.0 if t_prec + t_sens == 0 else 2 * t_prec * t_sens / (t_prec + t_sens)


def vessel_calibre(truth: np.ndarray) -> np.ndarray:
    """Calibre class of each reference vessel pixel: 0 background, i + 1 for `CALIBRES[i]`.

    A pixel takes the depth (distance to the background) of the deepest vessel pixel within 2 px
    of it: depth 1 is a vessel 1-2 px wide, depth 2 one 3-4 px wide, more a wider one. Edge pixels
    thus count with their vessel, not as "thin"."""
    vessels = truth.astype(np.uint8, copy=False)
    depth = cv2.distanceTransform(vessels, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    local = cv2.dilate(depth, np.ones((5, 5), np.uint8))
    calibre = np.digitize(local, [1.5, 2.5]).astype(np.uint8) + 1
    return np.where(vessels > 0, calibre, 0).astype(np.uint8)


def _check(probability: np.ndarray, truth: np.ndarray, fov: np.ndarray | None) -> np.ndarray:
    if probability.shape != truth.shape:
        raise ValueError(f"prediction {probability.shape} and annotation {truth.shape} differ in "
                         f"size; evaluate at the annotation's native resolution")
    if fov is None:
        return np.ones(truth.shape, dtype=bool)
    if fov.shape != truth.shape:
        raise ValueError(f"FOV {fov.shape} and annotation {truth.shape} differ in size")
    return fov.astype(bool, copy=False)


def _evaluate(probability: np.ndarray, truth: np.ndarray, fov: np.ndarray | None,
              threshold: float):
    """(metrics, confusion counts, clDice counts, FOV scores, FOV labels, FOV mask) of one
    image."""
    fov = _check(probability, truth, fov)
    truth = truth.astype(bool, copy=False)
    if not np.issubdtype(probability.dtype, np.floating):
        probability = probability.astype(np.float64)
    # one thresholding for counts and skeletons alike: ">= threshold" is vessel
    predicted_map = (probability >= threshold) & fov
    scores = probability[fov]
    labels = truth[fov]
    counts = confusion(predicted_map[fov], labels)
    skeleton = cldice_counts(predicted_map, truth & fov, fov)
    result = scores_from_counts(counts)
    result["auc_roc"], result["auc_pr"] = ranking_scores(scores, labels)
    result["cldice"] = cldice_from_counts(skeleton)
    return result, counts, skeleton, scores, labels, fov


def image_metrics(probability: np.ndarray, truth: np.ndarray, fov: np.ndarray | None,
                  threshold: float = 0.5) -> dict[str, float]:
    """All metrics of one image, counting only pixels inside the FOV."""
    return _evaluate(probability, truth, fov, threshold)[0]


@dataclass
class PooledEvaluator:
    """Accumulates per-image rows and pooled counts/histograms over a set of images."""

    threshold: float = 0.5
    rows: list[dict] = field(default_factory=list)
    counts: Counts = field(default_factory=lambda: Counts(0, 0, 0, 0))
    skeleton: np.ndarray = field(default_factory=lambda: np.zeros(4, dtype=np.int64))
    positive_hist: np.ndarray = field(default_factory=lambda: np.zeros(HISTOGRAM_BINS, np.int64))
    negative_hist: np.ndarray = field(default_factory=lambda: np.zeros(HISTOGRAM_BINS, np.int64))
    # the same histograms with every image scaled to weight 1 (see `per_image_threshold`)
    positive_share: np.ndarray = field(default_factory=lambda: np.zeros(HISTOGRAM_BINS))
    negative_share: np.ndarray = field(default_factory=lambda: np.zeros(HISTOGRAM_BINS))
    # vessel pixels by calibre (`CALIBRES`): a histogram each, and [detected, all] counts
    calibre_hist: np.ndarray = field(
        default_factory=lambda: np.zeros((len(CALIBRES), HISTOGRAM_BINS), np.int64))
    calibre_counts: np.ndarray = field(
        default_factory=lambda: np.zeros((len(CALIBRES), 2), np.int64))

    def add(self, image_id: str, probability: np.ndarray, truth: np.ndarray,
            fov: np.ndarray | None) -> dict[str, float]:
        # every per-image quantity is computed once and reused for the pooled accumulators
        row, counts, skeleton, scores, labels, fov = _evaluate(probability, truth, fov,
                                                               self.threshold)
        self.counts = self.counts + counts
        self.skeleton += skeleton
        bins = quantise(scores)
        positive = np.bincount(bins[labels], minlength=HISTOGRAM_BINS)
        negative = np.bincount(bins[~labels], minlength=HISTOGRAM_BINS)
        self.positive_hist += positive
        self.negative_hist += negative
        pixels = max(int(bins.size), 1)
        self.positive_share += positive / pixels
        self.negative_share += negative / pixels
        # widths from the whole annotation: a vessel cut by the FOV edge keeps its width
        classes = vessel_calibre(truth)[fov][labels].astype(np.int64) - 1
        self.calibre_hist += np.bincount(classes * HISTOGRAM_BINS + bins[labels],
                                         minlength=len(CALIBRES) * HISTOGRAM_BINS
                                         ).reshape(len(CALIBRES), HISTOGRAM_BINS)
        detected = scores[labels] >= self.threshold
        self.calibre_counts[:, 0] += np.bincount(classes[detected], minlength=len(CALIBRES))
        self.calibre_counts[:, 1] += np.bincount(classes, minlength=len(CALIBRES))
        row = {"id": image_id, **row, "threshold": self.threshold}
        self.rows.append(row)
        return row

    def pooled(self) -> dict[str, float]:
        result = scores_from_counts(self.counts)
        result["auc_roc"], result["auc_pr"] = histogram_ranking_scores(self.positive_hist,
                                                                       self.negative_hist)
        result["cldice"] = cldice_from_counts(self.skeleton)
        return result

    def calibre(self) -> list[dict]:
        """Pooled figures of the reference vessels of each calibre (`CALIBRES`).

        `auc_roc` ranks that calibre's vessel pixels against all background pixels; the pooled
        AUC-ROC is the share-weighted mean of these, so `auc_roc_loss` (share x (1 - AUC-ROC),
        summing to 1 - pooled AUC-ROC) says which vessels cost the ranking."""
        vessel_pixels = max(int(self.calibre_counts[:, 1].sum()), 1)
        rows = []
        for name, hist, (detected, total) in zip(CALIBRES, self.calibre_hist,
                                                 self.calibre_counts):
            share = float(total / vessel_pixels)
            auc_roc = histogram_ranking_scores(hist, self.negative_hist)[0]
            rows.append({"calibre": name, "vessel_pixels": int(total), "share": share,
                         "sensitivity": _ratio(detected, total, 1.0), "auc_roc": auc_roc,
                         "auc_roc_loss": share * (1.0 - auc_roc) if total else 0.0})
        return rows

    def per_image_threshold(self) -> tuple[float, float]:
        """The best-F1 threshold with every image counting equally, and that (weighted) F1.

        Pooled pixel counts let the largest photos choose: in a mixed validation set two HRF
        photos (3504x2336) outweigh three DRIVE photos (565x584) 16 to 1, and the threshold
        becomes HRF's. Scaling each image to weight 1 gives every camera its say."""
        return best_f1_threshold(self.positive_share, self.negative_share)

    def curves(self) -> dict[str, np.ndarray]:
        """Pooled ROC and precision-recall curves (for plots)."""
        tps, fps = _cumulative_from_histograms(self.positive_hist, self.negative_hist)
        positives, negatives = max(tps[-1], 1), max(fps[-1], 1)
        return {"fpr": fps / negatives, "tpr": tps / positives,
                "precision": tps / np.maximum(tps + fps, 1), "recall": tps / positives}


def quantise(probability: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(probability.astype(np.float32) * (HISTOGRAM_BINS - 1)), 0,
                   HISTOGRAM_BINS - 1).astype(np.int64)


def _cumulative_from_histograms(positive: np.ndarray, negative: np.ndarray):
    # thresholds from high to low: cumulative counts of pixels scoring at or above each bin
    tps = np.cumsum(positive[::-1]).astype(np.float64)
    fps = np.cumsum(negative[::-1]).astype(np.float64)
    keep = (positive[::-1] + negative[::-1]) > 0
    return tps[keep], fps[keep]


def histogram_ranking_scores(positive: np.ndarray, negative: np.ndarray) -> tuple[float, float]:
    if positive.sum() == 0 or negative.sum() == 0:
        return math.nan, math.nan
    return _curve_from_sorted(*_cumulative_from_histograms(positive, negative))


def best_f1_threshold(positive: np.ndarray, negative: np.ndarray) -> tuple[float, float]:
    """The threshold (bin edge) maximising pooled F1, and that F1: chosen on validation data.

    `quantise` rounds, so bin b holds probabilities in [(b - 0.5) / (BINS - 1), (b + 0.5) /
    (BINS - 1)). The F1 at "bins >= b" is the F1 of "probability >= the lower edge of bin b",
    which is therefore the threshold returned (not the bin centre b / (BINS - 1), which would
    drop the lower half of the chosen bin when the threshold is applied with >=).
    """
    tps = np.cumsum(positive[::-1]).astype(np.float64)
    fps = np.cumsum(negative[::-1]).astype(np.float64)
    fns = positive.sum() - tps
    # counts or per-image shares (fractions): only an empty denominator needs guarding
    denominator = 2 * tps + fps + fns
    f1 = np.divide(2 * tps, denominator, out=np.zeros_like(tps), where=denominator > 0)
    best = int(np.argmax(f1))
    lowest_bin = HISTOGRAM_BINS - 1 - best
    threshold = max(lowest_bin - 0.5, 0.0) / (HISTOGRAM_BINS - 1)
    return float(threshold), float(f1[best])


def summary_rows(rows: list[dict], pooled: dict[str, float]) -> list[dict]:
    """Per-image rows followed by pooled, mean and std rows (NaN-free means)."""
    table = [dict(r) for r in rows]
    threshold = rows[0]["threshold"] if rows else math.nan
    table.append({"id": "pooled", **pooled, "threshold": threshold})
    for name, func in (("mean", np.nanmean), ("std", np.nanstd)):
        stats = {}
        for metric in METRIC_NAMES:
            values = np.array([r[metric] for r in rows], dtype=np.float64)
            stats[metric] = float(func(values)) if np.isfinite(values).any() else math.nan
        table.append({"id": name, **stats, "threshold": threshold})
    return table
