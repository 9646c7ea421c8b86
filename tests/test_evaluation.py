"""NumPy evaluation metrics: scikit-learn agreement (property-based), hand cases, pooling,
large images, clDice and the DRIVE 2nd-observer reference figures."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn import metrics as skm

from vesselseg.evaluation import (
    CALIBRES,
    HISTOGRAM_BINS,
    METRIC_NAMES,
    Counts,
    PooledEvaluator,
    best_f1_threshold,
    cldice_counts,
    cldice_from_counts,
    confusion,
    histogram_ranking_scores,
    image_metrics,
    quantise,
    ranking_scores,
    scores_from_counts,
    summary_rows,
    vessel_calibre,
)

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
DRIVE_TEST = DATASETS / "DRIVE" / "test"
PROPERTY = settings(max_examples=80, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---------------------------------------------------------------- property-based: scikit-learn


@st.composite
def image_cases(draw, with_fov: bool = True):
    """(probability, truth, fov) with both classes inside the FOV; ties via rounding."""
    height = draw(st.integers(1, 24))
    width = draw(st.integers(2 if height == 1 else 1, 24))
    shape = (height, width)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    probability = draw(hnp.arrays(dtype, shape, elements=st.floats(0.0, 1.0, width=32)))
    decimals = draw(st.sampled_from([None, 1, 2, 3]))  # rounded -> many tied scores
    if decimals is not None:
        probability = np.round(probability, decimals).astype(dtype)
    truth = draw(hnp.arrays(np.bool_, shape))
    fov = draw(hnp.arrays(np.bool_, shape)) if with_fov else np.ones(shape, bool)
    # both classes present inside the FOV (scikit-learn's AUCs need them)
    truth.flat[0], truth.flat[-1] = True, False
    fov.flat[0] = fov.flat[-1] = True
    return probability, truth, fov


def sklearn_reference(probability, truth, fov, threshold):
    scores = probability[fov]
    labels = truth[fov].astype(int)
    predicted = (scores >= threshold).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "accuracy": skm.accuracy_score(labels, predicted),
            "precision": skm.precision_score(labels, predicted, zero_division=0),
            "sensitivity": skm.recall_score(labels, predicted, zero_division=0),
            "f1": skm.f1_score(labels, predicted, zero_division=0),
            "iou": skm.jaccard_score(labels, predicted, zero_division=0),
            "mcc": skm.matthews_corrcoef(labels, predicted),
            "auc_roc": skm.roc_auc_score(labels, scores),
            "auc_pr": skm.average_precision_score(labels, scores),
        }


@PROPERTY
@given(case=image_cases(), threshold=st.sampled_from([0.5, 0.3, 0.7, 0.25]))
def test_image_metrics_agree_with_sklearn(case, threshold):
    probability, truth, fov = case
    ours = image_metrics(probability, truth, fov, threshold)
    reference = sklearn_reference(probability, truth, fov, threshold)
    for name, expected in reference.items():
        assert ours[name] == pytest.approx(expected, abs=1e-6), name
    labels = truth[fov]
    tn = np.sum(~labels & (probability[fov] < threshold))
    assert ours["specificity"] == pytest.approx(tn / np.sum(~labels), abs=1e-12)
    assert all(not math.isnan(ours[name]) for name in METRIC_NAMES)


@PROPERTY
@given(scores=hnp.arrays(np.float64, st.integers(2, 400), elements=st.floats(0.0, 1.0)),
       labels=hnp.arrays(np.bool_, st.integers(2, 400)),
       decimals=st.sampled_from([None, 0, 1, 2]))
def test_ranking_scores_agree_with_sklearn(scores, labels, decimals):
    size = min(scores.size, labels.size)
    scores, labels = scores[:size], labels[:size].copy()
    labels[0], labels[-1] = True, False
    if decimals is not None:
        scores = np.round(scores, decimals)
    auc_roc, auc_pr = ranking_scores(scores, labels)
    assert auc_roc == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-6)
    assert auc_pr == pytest.approx(skm.average_precision_score(labels, scores), abs=1e-6)


@PROPERTY
@given(case=image_cases(with_fov=False))
def test_pooled_auc_of_quantised_scores_is_exact(case):
    # the histogram AUCs equal scikit-learn's on the quantised scores (no approximation but that)
    probability, truth, _ = case
    evaluator = PooledEvaluator()
    evaluator.add("a", probability, truth, None)
    pooled = evaluator.pooled()
    quantised = quantise(probability.ravel())
    assert pooled["auc_roc"] == pytest.approx(skm.roc_auc_score(truth.ravel(), quantised),
                                              abs=1e-9)
    assert pooled["auc_pr"] == pytest.approx(
        skm.average_precision_score(truth.ravel(), quantised), abs=1e-9)


@PROPERTY
@given(case=image_cases())
def test_calibre_auc_losses_sum_to_the_pooled_auc_loss(case):
    # each vessel pixel falls in one calibre, so the share-weighted calibre AUCs are the pooled one
    probability, truth, fov = case
    evaluator = PooledEvaluator(threshold=0.4)
    evaluator.add("a", probability, truth, fov)
    rows = evaluator.calibre()
    assert [r["calibre"] for r in rows] == list(CALIBRES)
    assert sum(r["vessel_pixels"] for r in rows) == evaluator.counts.tp + evaluator.counts.fn
    assert sum(r["auc_roc_loss"] for r in rows) == pytest.approx(
        1.0 - evaluator.pooled()["auc_roc"], abs=1e-9)
    detected = sum(r["sensitivity"] * r["vessel_pixels"] for r in rows)
    assert detected == pytest.approx(evaluator.counts.tp)


# ------------------------------------------------------------------------ hand-computed cases


def test_vessel_calibre_of_drawn_vessels():
    truth = np.zeros((40, 60), bool)
    truth[5, 5:55] = True  # 1 px wide
    truth[14:16, 5:55] = True  # 2 px
    truth[22:25, 5:55] = True  # 3 px
    truth[30:37, 5:55] = True  # 7 px
    calibre = vessel_calibre(truth)
    assert (calibre[~truth] == 0).all()
    middle = slice(10, 50)  # away from the line ends
    assert (calibre[5, middle] == 1).all() and (calibre[14:16, middle] == 1).all()
    assert (calibre[22:25, middle] == 2).all()
    assert (calibre[30:37, middle] == 3).all()  # its edge pixels too


def test_calibre_hand_case():
    # a thin vessel missed, a wide one found: the loss of AUC-ROC is all the thin vessel's
    truth = np.zeros((20, 20), bool)
    truth[3, 2:18] = True
    truth[10:15, 2:18] = True
    probability = np.where(truth, 0.9, 0.2)
    probability[3, 2:18] = 0.1
    evaluator = PooledEvaluator(threshold=0.5)
    evaluator.add("a", probability, truth, None)
    thin, medium, wide = evaluator.calibre()
    assert thin["vessel_pixels"] == 16 and medium["vessel_pixels"] == 0
    assert thin["sensitivity"] == 0.0 and thin["auc_roc"] == 0.0
    assert wide["sensitivity"] == 1.0 and wide["auc_roc"] == 1.0
    assert math.isnan(medium["auc_roc"]) and medium["auc_roc_loss"] == 0.0
    assert thin["auc_roc_loss"] == pytest.approx(1.0 - evaluator.pooled()["auc_roc"])


def test_hand_case():
    probability = np.array([[0.9, 0.5, 0.2], [0.6, 0.1, 0.4]])
    truth = np.array([[1, 1, 1], [0, 0, 0]], bool)
    # >= 0.5: tp 2 (0.9, 0.5), fn 1 (0.2), fp 1 (0.6), tn 2
    result = image_metrics(probability, truth, None)
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["sensitivity"] == pytest.approx(2 / 3)
    assert result["specificity"] == pytest.approx(2 / 3)
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(4 / 6)
    assert result["iou"] == pytest.approx(2 / 4)
    assert result["mcc"] == pytest.approx((2 * 2 - 1 * 1) / math.sqrt(3 * 3 * 3 * 3))
    # ROC: 6 of the 9 (positive, negative) pairs are ranked right (0.9: 3, 0.5: 2, 0.2: 1)
    assert result["auc_roc"] == pytest.approx(6 / 9)
    # AP: ranking 0.9 P, 0.6 N, 0.5 P, 0.4 N, 0.2 P -> precision 1, 2/3, 3/5 at the recall steps
    assert result["auc_pr"] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)


def test_empty_truth_and_empty_prediction():
    probability = np.full((4, 5), 0.1)
    truth = np.zeros((4, 5), bool)
    result = image_metrics(probability, truth, None)
    for name in ("accuracy", "sensitivity", "specificity", "precision", "f1", "iou", "mcc",
                 "cldice"):
        assert result[name] == 1.0, name
    # only the ranking metrics are undefined with a single class
    assert math.isnan(result["auc_roc"]) and math.isnan(result["auc_pr"])


def test_empty_truth_with_false_positives():
    probability = np.zeros((2, 3))
    probability[0, 0] = 0.9
    result = image_metrics(probability, np.zeros((2, 3), bool), None)
    # tp 0, fp 1, fn 0, tn 5
    assert result["accuracy"] == pytest.approx(5 / 6)
    assert result["precision"] == 0.0
    assert result["sensitivity"] == 1.0  # no vessel to miss
    assert result["specificity"] == pytest.approx(5 / 6)
    assert result["f1"] == 0.0
    assert result["iou"] == 0.0
    assert result["mcc"] == 0.0
    assert result["cldice"] == 0.0
    assert not any(math.isnan(result[n]) for n in METRIC_NAMES if not n.startswith("auc"))


def test_nothing_predicted_while_vessels_exist():
    truth = np.zeros((3, 3), bool)
    truth[1] = True
    result = image_metrics(np.zeros((3, 3)), truth, None)
    assert result["precision"] == 0.0
    assert result["sensitivity"] == 0.0
    assert result["f1"] == 0.0
    assert result["mcc"] == 0.0
    assert result["accuracy"] == pytest.approx(6 / 9)


def test_all_vessel_truth():
    probability = np.array([[0.9, 0.8], [0.3, 0.7]])
    result = image_metrics(probability, np.ones((2, 2), bool), None)
    # tp 3, fn 1, no negatives
    assert result["accuracy"] == pytest.approx(3 / 4)
    assert result["sensitivity"] == pytest.approx(3 / 4)
    assert result["specificity"] == 1.0
    assert result["precision"] == 1.0
    assert result["f1"] == pytest.approx(6 / 7)
    assert result["iou"] == pytest.approx(3 / 4)
    assert result["mcc"] == 0.0
    assert math.isnan(result["auc_roc"]) and math.isnan(result["auc_pr"])


def test_threshold_is_inclusive():
    truth = np.array([[1, 1, 0, 0]], bool)
    for dtype in (np.float32, np.float64):
        probability = np.array([[0.5, 0.49999, 0.5, 0.3]], dtype)
        result = image_metrics(probability, truth, None, threshold=0.5)
        # 0.5 is vessel (tp 1 and fp 1), 0.49999 is not (fn 1)
        assert result["precision"] == pytest.approx(1 / 2)
        assert result["sensitivity"] == pytest.approx(1 / 2)
        lower = image_metrics(probability, truth, None, threshold=0.3)
        assert lower["sensitivity"] == 1.0
        assert lower["specificity"] == 0.0
        evaluator = PooledEvaluator(threshold=0.3)
        evaluator.add("x", probability, truth, None)
        assert evaluator.counts == Counts(tp=2, fp=2, fn=0, tn=0)
        assert evaluator.rows[0]["threshold"] == 0.3


def test_binary_and_integer_maps_are_accepted():
    truth = np.array([[1, 0], [1, 0]], bool)
    predicted = np.array([[1, 1], [0, 0]], bool)
    for probability in (predicted, predicted.astype(np.uint8)):
        result = image_metrics(probability, truth, None)
        assert result["f1"] == pytest.approx(0.5)
        assert result["auc_roc"] == pytest.approx(0.5)


def test_fov_exclusion():
    probability = np.array([[0.9, 0.1, 0.9], [0.1, 0.9, 0.1]])
    truth = np.array([[1, 1, 0], [0, 1, 1]], bool)
    fov = np.array([[1, 0, 0], [1, 1, 0]], bool)
    # inside: (0.9, 1) (0.1, 0) (0.9, 1): perfect
    result = image_metrics(probability, truth, fov)
    for name in METRIC_NAMES:
        assert result[name] == 1.0, name
    # anything outside the FOV can change
    changed = probability.copy()
    changed[~fov] = 1 - changed[~fov]
    assert image_metrics(changed, np.where(fov, truth, ~truth), fov) == result
    assert image_metrics(probability, truth, None)["f1"] < 1.0


def test_empty_fov_is_defined():
    probability = np.random.default_rng(0).random((5, 5))
    truth = probability > 0.5
    result = image_metrics(probability, truth, np.zeros((5, 5), bool))
    assert result["f1"] == 1.0 and result["accuracy"] == 1.0
    assert math.isnan(result["auc_roc"])
    assert all(math.isnan(v) for v in ranking_scores(np.array([]), np.array([], bool)))


def test_size_mismatch_is_an_error():
    with pytest.raises(ValueError, match="native resolution"):
        image_metrics(np.zeros((4, 4)), np.zeros((5, 4), bool), None)
    with pytest.raises(ValueError, match="FOV"):
        image_metrics(np.zeros((4, 4)), np.zeros((4, 4), bool), np.ones((4, 5), bool))


def test_scores_from_counts_are_never_nan():
    for counts in (Counts(0, 0, 0, 0), Counts(0, 0, 0, 7), Counts(5, 0, 0, 0),
                   Counts(0, 3, 0, 0), Counts(0, 0, 3, 0)):
        assert not any(math.isnan(v) for v in scores_from_counts(counts).values()), counts


# -------------------------------------------------------------------------------- clDice


def test_cldice_identical_masks():
    truth = np.zeros((20, 20), bool)
    truth[5:8, 2:18] = True
    truth[2:18, 10:12] = True
    fov = np.ones_like(truth)
    assert cldice_from_counts(cldice_counts(truth, truth, fov)) == 1.0
    assert image_metrics(truth.astype(float), truth, None)["cldice"] == 1.0


def test_cldice_hand_case():
    # one-pixel lines are their own skeletons: topology precision 1, sensitivity 5/10
    truth = np.zeros((5, 14), bool)
    truth[2, 2:12] = True
    predicted = np.zeros_like(truth)
    predicted[2, 2:7] = True
    counts = cldice_counts(predicted, truth, np.ones_like(truth))
    assert counts.tolist() == [5, 5, 5, 10]
    assert cldice_from_counts(counts) == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert cldice_from_counts(np.array([0, 0, 0, 0])) == 1.0
    assert cldice_from_counts(np.array([0, 3, 0, 4])) == 0.0


# ------------------------------------------------------------------------------- pooling


def random_images(count, shape=(48, 40), seed=0):
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        truth = rng.random(shape) < 0.15
        probability = np.clip(0.35 * truth + rng.normal(0.35, 0.2, shape), 0, 1)
        fov = np.ones(shape, bool)
        fov[:3] = False
        images.append((probability, truth, fov))
    return images


def test_pooled_counts_are_the_sum_over_images():
    evaluator = PooledEvaluator()
    total = Counts(0, 0, 0, 0)
    for i, (probability, truth, fov) in enumerate(random_images(4)):
        evaluator.add(f"img{i}", probability, truth, fov)
        total = total + confusion(probability[fov] >= 0.5, truth[fov])
    assert evaluator.counts == total
    assert sum(dataclass_values(total)) == 4 * 45 * 40
    assert evaluator.positive_hist.sum() == total.tp + total.fn
    assert evaluator.negative_hist.sum() == total.fp + total.tn


def dataclass_values(counts: Counts) -> list[int]:
    return [counts.tp, counts.fp, counts.fn, counts.tn]


def test_pooled_f1_comes_from_summed_counts():
    # image a: a tiny image, perfect; image b: large, half the vessels missed
    a_truth = np.zeros((4, 4), bool)
    a_truth[1, 1] = True
    b_truth = np.zeros((10, 10), bool)
    b_truth[2:6, 2:7] = True  # 20 vessel pixels
    b_probability = b_truth.astype(float)
    b_probability[2:4, 2:7] = 0.2  # 10 missed
    evaluator = PooledEvaluator()
    row_a = evaluator.add("a", a_truth.astype(float), a_truth, None)
    row_b = evaluator.add("b", b_probability, b_truth, None)
    assert row_a["f1"] == 1.0
    assert row_b["f1"] == pytest.approx(20 / 30)
    pooled = evaluator.pooled()
    # tp 11, fp 0, fn 10 -> 22 / 32, not the mean of 1 and 2/3
    assert evaluator.counts == Counts(11, 0, 10, 16 - 1 + 100 - 20)
    assert pooled["f1"] == pytest.approx(22 / 32)
    assert pooled["f1"] != pytest.approx((1 + 20 / 30) / 2)
    assert pooled["sensitivity"] == pytest.approx(11 / 21)


def test_summary_rows_with_a_single_class_image():
    evaluator = PooledEvaluator()
    images = random_images(2, seed=1)
    for i, (probability, truth, fov) in enumerate(images):
        evaluator.add(f"img{i}", probability, truth, fov)
    # an image without any vessel: its own AUCs are NaN, by design
    empty_row = evaluator.add("empty", np.full((8, 8), 0.2), np.zeros((8, 8), bool), None)
    assert math.isnan(empty_row["auc_roc"]) and math.isnan(empty_row["auc_pr"])
    table = summary_rows(evaluator.rows, evaluator.pooled())
    assert [row["id"] for row in table] == ["img0", "img1", "empty", "pooled", "mean", "std"]
    for row in table[3:]:
        for name in METRIC_NAMES:
            assert not math.isnan(row[name]), (row["id"], name)
        assert row["threshold"] == 0.5
    per_image_auc = [row["auc_roc"] for row in table[:2]]
    assert table[4]["auc_roc"] == pytest.approx(np.mean(per_image_auc))
    assert table[5]["auc_roc"] == pytest.approx(np.std(per_image_auc))
    f1s = [row["f1"] for row in table[:3]]
    assert table[4]["f1"] == pytest.approx(np.mean(f1s))
    assert table[5]["f1"] == pytest.approx(np.std(f1s))


def test_summary_rows_of_no_image():
    table = summary_rows([], PooledEvaluator().pooled())
    assert [row["id"] for row in table] == ["pooled", "mean", "std"]


def test_histogram_pooled_auc_is_close_to_exact():
    rng = np.random.default_rng(7)
    evaluator = PooledEvaluator()
    scores, labels = [], []
    for i, (probability, truth, fov) in enumerate(random_images(3, (96, 80), seed=2)):
        probability = probability + rng.normal(0, 1e-3, probability.shape)  # few exact ties
        probability = np.clip(probability, 0, 1)
        evaluator.add(str(i), probability, truth, fov)
        scores.append(probability[fov])
        labels.append(truth[fov])
    pooled = evaluator.pooled()
    scores, labels = np.concatenate(scores), np.concatenate(labels)
    assert pooled["auc_roc"] == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-3)
    assert pooled["auc_pr"] == pytest.approx(skm.average_precision_score(labels, scores),
                                             abs=1e-3)
    curves = evaluator.curves()
    assert curves["tpr"][-1] == 1.0 and curves["fpr"][-1] == 1.0
    assert np.all(np.diff(curves["tpr"]) >= 0)
    single = np.zeros(HISTOGRAM_BINS, np.int64)
    single[5] = 3
    assert all(math.isnan(v) for v in histogram_ranking_scores(single, np.zeros_like(single)))


def histograms(positives, negatives):
    positive = np.bincount(quantise(np.asarray(positives)), minlength=HISTOGRAM_BINS)
    negative = np.bincount(quantise(np.asarray(negatives)), minlength=HISTOGRAM_BINS)
    return positive, negative


def f1_at(threshold, positives, negatives):
    tp = int(np.sum(np.asarray(positives) >= threshold))
    fp = int(np.sum(np.asarray(negatives) >= threshold))
    return 2 * tp / (2 * tp + fp + (len(positives) - tp))


def test_best_f1_threshold_constructed_case():
    positives = [0.9, 0.8, 0.6]
    negatives = [0.7, 0.3, 0.1]
    # >=0.9: 2/5; >=0.8: 4/5; >=0.7: 4/6; >=0.6: 6/7 (best); >=0.3: 6/8; >=0.1: 6/9
    threshold, f1 = best_f1_threshold(*histograms(positives, negatives))
    assert f1 == pytest.approx(6 / 7)
    assert 0.3 < threshold <= 0.6
    assert threshold == pytest.approx(0.6, abs=1 / HISTOGRAM_BINS)
    assert f1_at(threshold, positives, negatives) == pytest.approx(f1)


def test_best_f1_threshold_keeps_the_lowest_chosen_pixel():
    # the lowest vessel of the chosen cut lies just below its bin's centre: applying the threshold
    # with >= must still count it (the threshold is the bin's lower edge, not its centre)
    step = 1 / (HISTOGRAM_BINS - 1)
    low = (40000 - 0.3) * step
    positives = [0.95, 0.9, low]
    negatives = [0.2, 0.1, 0.05, 0.01]
    threshold, f1 = best_f1_threshold(*histograms(positives, negatives))
    assert f1 == 1.0
    assert threshold <= low
    assert f1_at(threshold, positives, negatives) == 1.0
    # and the chosen threshold, used by an evaluator, reproduces that F1
    evaluator = PooledEvaluator(threshold=threshold)
    evaluator.add("v", np.array([positives + negatives]), np.array([[1, 1, 1, 0, 0, 0, 0]], bool),
                  None)
    assert evaluator.pooled()["f1"] == 1.0


def test_best_f1_threshold_without_vessels_is_defined():
    threshold, f1 = best_f1_threshold(*histograms([], [0.2, 0.7]))
    assert 0.0 <= threshold <= 1.0
    assert f1 == 0.0


# --------------------------------------------------------------------------- large images


def test_large_image_counts_do_not_overflow():
    ones = np.ones((4000, 3000), bool)
    counts = confusion(ones, ones)
    assert counts == Counts(12_000_000, 0, 0, 0)
    assert all(type(v) is int for v in dataclass_values(counts))
    # a set of such images: far beyond int32, still exact, MCC finite
    big = Counts(0, 0, 0, 0)
    for _ in range(400):
        big = big + Counts(12_000_000, 3_000_000, 2_000_000, 50_000_000)
    assert big.tp == 4_800_000_000
    scores = scores_from_counts(big)
    assert scores["f1"] == pytest.approx(24 / 29)
    assert -1 <= scores["mcc"] <= 1


def test_large_sparse_image_through_the_evaluator():
    truth = np.zeros((4000, 3000), bool)
    truth[:, ::50] = True
    truth[::60, :] = True
    evaluator = PooledEvaluator()
    row = evaluator.add("big", truth.astype(np.float32), truth, None)
    vessels = int(truth.sum())
    assert evaluator.counts == Counts(vessels, 0, 0, 12_000_000 - vessels)
    assert all(type(v) is int for v in dataclass_values(evaluator.counts))
    assert evaluator.positive_hist.dtype == np.int64
    assert int(evaluator.positive_hist.sum() + evaluator.negative_hist.sum()) == 12_000_000
    assert row["f1"] == 1.0 and row["auc_roc"] == 1.0 and row["cldice"] == 1.0


# ------------------------------------------------------------------ real data: DRIVE 2nd observer


@pytest.mark.real_data
@pytest.mark.skipif(not (DRIVE_TEST / "2nd_manual").is_dir(),
                    reason=f"DRIVE test set with 2nd_manual not found under {DATASETS}")
def test_drive_second_observer_reference_row():
    from vesselseg.io import read_mask

    evaluator = PooledEvaluator(threshold=0.5)
    fov_pixels = 0
    for number in range(1, 21):
        truth = read_mask(DRIVE_TEST / "1st_manual" / f"{number:02d}_manual1.gif")
        second = read_mask(DRIVE_TEST / "2nd_manual" / f"{number:02d}_manual2.gif",
                           truth.shape)
        fov = read_mask(DRIVE_TEST / "mask" / f"{number:02d}_test_mask.gif", truth.shape)
        assert truth.shape == (584, 565)
        fov_pixels += int(fov.sum())
        evaluator.add(f"{number:02d}", second.astype(np.float32), truth, fov)
    assert fov_pixels == 4_538_143
    pooled = evaluator.pooled()
    reference = {"accuracy": 0.9473, "sensitivity": 0.7746, "specificity": 0.9725,
                 "precision": 0.8040, "f1": 0.7891, "iou": 0.6516}
    for name, expected in reference.items():
        assert abs(pooled[name] - expected) < 5e-5, (name, pooled[name])
    positives = evaluator.counts.tp + evaluator.counts.fn
    assert positives / fov_pixels == pytest.approx(0.127, abs=5e-4)
    table = summary_rows(evaluator.rows, pooled)
    assert len(table) == 23
    assert all(not math.isnan(table[-3 + k][name]) for k in range(3) for name in METRIC_NAMES)


def test_per_image_threshold_lets_a_small_photo_count():
    """A large photo wants a strict threshold, a small one a lenient one: pooled pixels let the
    large photo decide alone; weighing each photo once finds the threshold that serves both."""
    large_truth = np.zeros((100, 100), bool)
    large_truth[:10] = True  # 1000 vessel pixels at 0.9
    large = np.full((100, 100), 0.1, np.float32)
    large[:10] = 0.9
    large[10:15] = 0.7  # 500 background pixels a lenient threshold would take
    small_truth = np.zeros((10, 10), bool)
    small_truth[0] = True  # 10 vessel pixels the model is unsure of
    small = np.full((10, 10), 0.1, np.float32)
    small[0] = 0.6
    evaluator = PooledEvaluator()
    evaluator.add("large", large, large_truth, None)
    evaluator.add("small", small, small_truth, None)
    pooled, _ = best_f1_threshold(evaluator.positive_hist, evaluator.negative_hist)
    per_image, weighted_f1 = evaluator.per_image_threshold()
    assert 0.7 < pooled <= 0.9
    assert 0.1 < per_image <= 0.6
    assert weighted_f1 == pytest.approx(2 * 0.2 / (2 * 0.2 + 0.05))
