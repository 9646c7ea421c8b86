"""Segmentation losses: formulas on hand-computed cases, FOV masking, gradients, registry."""
from __future__ import annotations

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from vesselseg.errors import ConfigError  # noqa: E402
from vesselseg.losses import (  # noqa: E402
    EPSILON,
    LOSS_NAMES,
    bce_loss,
    focal_loss,
    make_loss,
    skeleton_recall_loss,
    soft_cldice_loss,
    soft_dice_loss,
    soft_skeleton,
)

# one 2x2 image: vessel mask y, prediction p (the 4 pixels in reading order)
Y = [1.0, 0.0, 1.0, 0.0]
P = [0.8, 0.3, 0.6, 0.1]


def target(vessels, fov=None):
    """(1, 2, 2, C) y_true: one channel, or vessels + FOV channels."""
    y = np.asarray(vessels, np.float32).reshape(1, 2, 2, 1)
    if fov is None:
        return y
    return np.concatenate([y, np.asarray(fov, np.float32).reshape(1, 2, 2, 1)], axis=-1)


def prediction(values):
    return np.asarray(values, np.float32).reshape(1, 2, 2, 1)


def value(loss, y_true, y_pred) -> float:
    return float(np.asarray(loss(tf.constant(y_true), tf.constant(y_pred))))


def dice_formula(y, p, eps=1.0):
    return 1 - (2 * sum(a * b for a, b in zip(y, p)) + eps) / (sum(p) + sum(y) + eps)


def bce_formula(y, p):
    return -sum(a * math.log(b) + (1 - a) * math.log(1 - b) for a, b in zip(y, p)) / len(y)


def focal_formula(y, p, alpha=0.25, gamma=2.0):
    terms = [-alpha * (1 - b) ** gamma * a * math.log(b)
             - (1 - alpha) * b**gamma * (1 - a) * math.log(1 - b) for a, b in zip(y, p)]
    return sum(terms) / len(terms)


def test_epsilon_is_one():
    assert EPSILON == 1.0


def test_dice_matches_formula():
    # 1 - (2 * 1.4 + 1) / (1.8 + 2 + 1) = 1 - 3.8 / 4.8
    assert dice_formula(Y, P) == pytest.approx(1 - 3.8 / 4.8)
    assert value(make_loss("dice"), target(Y), prediction(P)) == pytest.approx(1 - 3.8 / 4.8,
                                                                              abs=1e-6)


def test_dice_perfect_and_empty():
    assert value(soft_dice_loss, target(Y), prediction(Y)) == pytest.approx(0.0, abs=1e-7)
    # both masks empty: (0 + 1) / (0 + 0 + 1) -> loss 0, thanks to eps
    zeros = [0.0] * 4
    assert value(soft_dice_loss, target(zeros), prediction(zeros)) == pytest.approx(0.0)
    # empty truth, some prediction: 1 - 1 / (1.3 + 1)
    assert value(soft_dice_loss, target(zeros), prediction([0.5, 0.8, 0.0, 0.0])) == \
        pytest.approx(1 - 1 / 2.3, abs=1e-6)


def test_dice_is_pooled_over_the_batch():
    y = np.stack([target(Y)[0], target([0.0] * 4)[0]])
    p = np.stack([prediction(P)[0], prediction([0.5, 0.0, 0.0, 0.0])[0]])
    expected = 1 - (2 * 1.4 + 1) / (1.8 + 0.5 + 2 + 1)
    assert value(soft_dice_loss, y, p) == pytest.approx(expected, abs=1e-6)


def test_bce_matches_formula():
    expected = bce_formula(Y, P)
    assert expected == pytest.approx(-(math.log(0.8) + math.log(0.7) + math.log(0.6)
                                       + math.log(0.9)) / 4)
    assert value(make_loss("bce"), target(Y), prediction(P)) == pytest.approx(expected, rel=1e-5)


def test_focal_matches_formula():
    expected = focal_formula(Y, P)
    hand = (-0.25 * 0.2**2 * math.log(0.8) - 0.75 * 0.3**2 * math.log(0.7)
            - 0.25 * 0.4**2 * math.log(0.6) - 0.75 * 0.1**2 * math.log(0.9)) / 4
    assert expected == pytest.approx(hand)
    assert value(make_loss("focal"), target(Y), prediction(P)) == pytest.approx(hand, rel=1e-5)
    custom = make_loss("focal", focal_alpha=0.6, focal_gamma=1.0)
    assert value(custom, target(Y), prediction(P)) == pytest.approx(
        focal_formula(Y, P, 0.6, 1.0), rel=1e-5)
    assert value(focal_loss, target(Y), prediction(P)) == pytest.approx(hand, rel=1e-5)


@pytest.mark.parametrize("balance", [0.5, 0.2])
def test_combined_losses_weigh_their_terms(balance):
    dice = dice_formula(Y, P)
    focal_dice = make_loss("focal_dice", balance=balance)
    bce_dice = make_loss("bce_dice", balance=balance)
    assert value(focal_dice, target(Y), prediction(P)) == pytest.approx(
        balance * focal_formula(Y, P) + (1 - balance) * dice, rel=1e-5)
    assert value(bce_dice, target(Y), prediction(P)) == pytest.approx(
        balance * bce_formula(Y, P) + (1 - balance) * dice, rel=1e-5)


def test_fov_channel_restricts_the_average():
    fov = [1.0, 1.0, 0.0, 1.0]  # pixel 2 (a vessel predicted 0.6) is outside the FOV
    inside = [0, 1, 3]
    y_in = [Y[i] for i in inside]
    p_in = [P[i] for i in inside]
    assert value(soft_dice_loss, target(Y, fov), prediction(P)) == pytest.approx(
        dice_formula(y_in, p_in), abs=1e-6)
    assert value(bce_loss, target(Y, fov), prediction(P)) == pytest.approx(
        bce_formula(y_in, p_in), rel=1e-5)
    assert value(make_loss("focal"), target(Y, fov), prediction(P)) == pytest.approx(
        focal_formula(y_in, p_in), rel=1e-5)


def test_one_channel_target_means_all_inside_fov():
    for name in LOSS_NAMES:
        loss = make_loss(name)
        assert value(loss, target(Y), prediction(P)) == pytest.approx(
            value(loss, target(Y, [1.0] * 4), prediction(P)), rel=1e-6)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_use_fov_false_counts_every_pixel(name):
    """TrainConfig.use_fov_in_loss=False: the FOV channel is ignored, as if all were inside."""
    with_fov = target(Y, [1.0, 0.0, 1.0, 0.0])
    loss = make_loss(name, use_fov=False)
    assert value(loss, with_fov, prediction(P)) == pytest.approx(
        value(make_loss(name), target(Y), prediction(P)), rel=1e-6)
    assert value(loss, with_fov, prediction(P)) != pytest.approx(
        value(make_loss(name), with_fov, prediction(P)), rel=1e-6)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_predictions_outside_fov_do_not_matter(name):
    rng = np.random.default_rng(1)
    y_true = np.zeros((2, 8, 8, 2), np.float32)
    y_true[..., 0] = rng.random((2, 8, 8)) < 0.3
    y_true[:, 2:6, 2:6, 1] = 1.0
    y_pred = rng.uniform(0.05, 0.95, (2, 8, 8, 1)).astype(np.float32)
    changed = y_pred.copy()
    outside = y_true[..., 1] == 0
    changed[outside] = rng.uniform(0.0, 1.0, (int(outside.sum()), 1)).astype(np.float32)
    changed_truth = y_true.copy()
    changed_truth[..., 0][outside] = 1.0 - changed_truth[..., 0][outside]
    loss = make_loss(name)
    base = value(loss, y_true, y_pred)
    assert value(loss, y_true, changed) == pytest.approx(base, rel=1e-6, abs=1e-7)
    assert value(loss, changed_truth, y_pred) == pytest.approx(base, rel=1e-6, abs=1e-7)
    # ... while a change inside the FOV does
    inside_changed = y_pred.copy()
    inside_changed[:, 3, 3, 0] = 1.0 - inside_changed[:, 3, 3, 0]
    assert value(loss, y_true, inside_changed) != pytest.approx(base, rel=1e-6)


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("fov_channel", [False, True])
def test_gradients_finite_on_empty_masks(name, fov_channel):
    y_true = np.zeros((2, 8, 8, 2 if fov_channel else 1), np.float32)
    if fov_channel:
        y_true[:, 1:7, 1:7, 1] = 1.0
    loss = make_loss(name)
    for start in (np.zeros((2, 8, 8, 1)), np.ones((2, 8, 8, 1)),
                  np.full((2, 8, 8, 1), 0.5)):
        probabilities = tf.Variable(np.asarray(start, np.float32))
        with tf.GradientTape() as tape:
            result = loss(tf.constant(y_true), probabilities)
        gradient = tape.gradient(result, probabilities)
        assert np.isfinite(float(result))
        assert gradient is not None
        assert np.all(np.isfinite(gradient.numpy()))
    # an all-zero FOV is defined too (nothing to learn from, but no NaN)
    if fov_channel:
        y_true[..., 1] = 0.0
        p = tf.Variable(np.full((2, 8, 8, 1), 0.5, np.float32))
        with tf.GradientTape() as tape:
            result = loss(tf.constant(y_true), p)
        assert np.isfinite(float(result))
        assert np.all(np.isfinite(tape.gradient(result, p).numpy()))


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_losses_accept_bfloat16_predictions(name):
    y_pred = tf.cast(tf.constant(prediction(P)), tf.bfloat16)
    result = make_loss(name)(tf.constant(target(Y, [1.0] * 4)), y_pred)
    assert result.dtype == tf.float32
    assert np.isfinite(float(result))


def test_unknown_loss_lists_names():
    with pytest.raises(ConfigError) as info:
        make_loss("hinge")
    message = str(info.value)
    assert "hinge" in message
    names = {"dice", "bce", "focal", "focal_dice", "bce_dice", "cldice", "bce_dice_cldice",
             "bce_dice_skeleton"}
    for name in names:
        assert name in message
    assert set(LOSS_NAMES) == names


def test_loss_functions_are_named():
    for name in LOSS_NAMES:
        assert make_loss(name).__name__ == f"{name}_loss"


def test_soft_skeleton_of_a_bar_is_its_centre_line():
    bar = np.zeros((1, 16, 16, 1), np.float32)
    bar[0, 6:11, 2:14, 0] = 1.0  # 5 rows tall
    skeleton = np.asarray(soft_skeleton(tf.constant(bar)))[0, ..., 0] > 0.5
    assert skeleton[8, 4:12].all()  # the middle row, away from the bar's ends
    assert not skeleton[[6, 7, 9, 10]].any() and not skeleton[:6].any()


def test_soft_skeleton_reaches_the_widest_vessels():
    """SKELETON_ITERATIONS covers vessels up to 22 px wide (the widest in a 512 window: ~13)."""
    bar = np.zeros((1, 40, 60, 1), np.float32)
    bar[0, 9:31, 5:55, 0] = 1.0  # 22 rows tall
    skeleton = np.asarray(soft_skeleton(tf.constant(bar)))[0, ..., 0] > 0.5
    assert skeleton[19:21, 20:40].any(axis=0).all()  # a centre line along the middle


def two_vessels(miss: str) -> tuple[np.ndarray, np.ndarray]:
    """A 7-px trunk and a 1-px capillary, and a perfect prediction that misses 40 pixels: the
    whole capillary, or one edge row of the trunk."""
    truth = np.zeros((1, 32, 48, 1), np.float32)
    truth[0, 4:11, 4:44, 0] = 1.0  # trunk
    truth[0, 20, 4:44, 0] = 1.0  # capillary
    predicted = truth.copy()
    if miss == "capillary":
        predicted[0, 20, 4:44, 0] = 0.0
    else:
        predicted[0, 10, 4:44, 0] = 0.0
    return truth, predicted


def test_cldice_charges_a_missed_capillary_more_than_a_missed_edge():
    """Plain Dice counts pixels, so both misses cost the same; clDice counts centre lines, so the
    missed capillary (a whole vessel) costs far more than a trunk's edge row: the reason to use it
    for thin vessels."""
    truth, capillary_missed = two_vessels("capillary")
    _, edge_missed = two_vessels("edge")
    assert value(soft_dice_loss, truth, capillary_missed) == pytest.approx(
        value(soft_dice_loss, truth, edge_missed), abs=1e-6)
    assert value(soft_cldice_loss, truth, truth) == pytest.approx(0.0, abs=1e-6)
    assert value(soft_cldice_loss, truth, edge_missed) < 0.02
    assert value(soft_cldice_loss, truth, capillary_missed) > 0.15
    assert value(skeleton_recall_loss, truth, truth) == pytest.approx(0.0, abs=1e-6)
    assert value(skeleton_recall_loss, truth, edge_missed) == pytest.approx(0.0, abs=1e-6)
    assert value(skeleton_recall_loss, truth, capillary_missed) > 0.1
    for name in ("cldice", "bce_dice_cldice", "bce_dice_skeleton"):
        loss = make_loss(name)
        assert value(loss, truth, capillary_missed) > value(loss, truth, edge_missed)


def test_combined_cldice_losses_are_their_terms_mixed():
    rng = np.random.default_rng(3)
    truth = (rng.random((2, 16, 16, 1)) < 0.3).astype(np.float32)
    predicted = rng.uniform(0.05, 0.95, (2, 16, 16, 1)).astype(np.float32)
    dice, cldice = value(soft_dice_loss, truth, predicted), value(soft_cldice_loss, truth,
                                                                   predicted)
    assert value(make_loss("cldice"), truth, predicted) == pytest.approx(
        0.5 * dice + 0.5 * cldice, rel=1e-5)
    assert value(make_loss("bce_dice_cldice", balance=0.3), truth, predicted) == pytest.approx(
        0.3 * value(bce_loss, truth, predicted) + 0.7 * (0.5 * dice + 0.5 * cldice), rel=1e-5)
    assert value(make_loss("bce_dice_skeleton"), truth, predicted) == pytest.approx(
        value(make_loss("bce_dice"), truth, predicted)
        + 0.5 * value(skeleton_recall_loss, truth, predicted), rel=1e-5)


def test_skeleton_recall_gradient_reaches_only_the_prediction_on_the_centre_lines():
    truth, _ = two_vessels("edge")
    probabilities = tf.Variable(np.full(truth.shape, 0.5, np.float32))
    labels = tf.Variable(truth)
    with tf.GradientTape(persistent=True) as tape:
        result = skeleton_recall_loss(labels, probabilities)
    assert tape.gradient(result, labels) is None  # the labels' skeleton is a constant
    gradient = tape.gradient(result, probabilities).numpy()[0, ..., 0]
    assert gradient[7, 20] < 0 and gradient[20, 20] < 0  # trunk centre, capillary
    assert gradient[4, 20] == 0 and gradient[15, 20] == 0  # trunk edge, background
