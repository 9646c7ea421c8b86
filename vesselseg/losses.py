"""Segmentation losses, found by name. Each ignores pixels outside the FOV.

Targets carry the FOV as a second channel: y_true[..., 0] is the vessel mask, y_true[..., 1] the
FOV (1 inside). A one-channel y_true means "everything is inside the FOV". Packing the FOV into the
target keeps Keras' plain (y_true, y_pred) loss signature and works under any distribution strategy.
"""
from __future__ import annotations

from collections.abc import Callable

from keras import ops

from .errors import ConfigError

EPSILON = 1.0  # Dice smoothing: defined (loss 0) when both masks are empty
_CLIP = 1e-7


def split_target(y_true, y_pred):
    """(vessels, fov weights, probabilities) as float32 tensors of the same shape."""
    y_pred = ops.cast(y_pred, "float32")
    y_true = ops.cast(y_true, "float32")
    vessels = y_true[..., :1]
    fov = y_true[..., 1:2] if y_true.shape[-1] == 2 else ops.ones_like(vessels)
    return vessels, fov, y_pred[..., :1]


def soft_dice_loss(y_true, y_pred, epsilon: float = EPSILON):
    """1 - (2 sum(p*y) + eps) / (sum p + sum y + eps), over the batch, inside the FOV."""
    y, fov, p = split_target(y_true, y_pred)
    p = p * fov
    y = y * fov
    intersection = ops.sum(p * y)
    return 1.0 - (2.0 * intersection + epsilon) / (ops.sum(p) + ops.sum(y) + epsilon)


def _masked_mean(values, fov):
    return ops.sum(values * fov) / ops.maximum(ops.sum(fov), 1.0)


def bce_loss(y_true, y_pred):
    """Binary cross-entropy averaged over FOV pixels."""
    y, fov, p = split_target(y_true, y_pred)
    p = ops.clip(p, _CLIP, 1.0 - _CLIP)
    return _masked_mean(-(y * ops.log(p) + (1.0 - y) * ops.log(1.0 - p)), fov)


def focal_loss(y_true, y_pred, alpha: float = 0.25, gamma: float = 2.0):
    """-a(1-p)^g y log p - (1-a) p^g (1-y) log(1-p), averaged over FOV pixels."""
    y, fov, p = split_target(y_true, y_pred)
    p = ops.clip(p, _CLIP, 1.0 - _CLIP)
    positive = -alpha * ops.power(1.0 - p, gamma) * y * ops.log(p)
    negative = -(1.0 - alpha) * ops.power(p, gamma) * (1.0 - y) * ops.log(1.0 - p)
    return _masked_mean(positive + negative, fov)


# soft-skeleton thinning steps: vessels up to 2 * 10 + 2 = 22 px wide get a skeleton (wider ones
# none); the widest vessels measure about 13 px in a 512x512 training window, even zoomed
SKELETON_ITERATIONS = 10


def _plus_dilate(x):
    """Max over a plus-shaped 3x3 neighbourhood."""
    vertical = ops.max_pool(x, pool_size=(3, 1), strides=1, padding="same")
    return ops.maximum(vertical, ops.max_pool(x, pool_size=(1, 3), strides=1, padding="same"))


def _soft_erode(x):
    """Min over a plus-shaped 3x3 neighbourhood (min-pooling as -max(-x))."""
    return -_plus_dilate(-x)


def _soft_open(x):
    return ops.max_pool(_soft_erode(x), pool_size=3, strides=1, padding="same")


def soft_skeleton(x, iterations: int = SKELETON_ITERATIONS):
    """Differentiable skeleton of a (B, H, W, 1) map in [0, 1] (Shit et al., clDice, CVPR
    2021): what repeated erosion leaves that an opening would remove, i.e. the centre lines."""
    skeleton = ops.relu(x - _soft_open(x))
    for _ in range(iterations):
        x = _soft_erode(x)
        delta = ops.relu(x - _soft_open(x))
        skeleton = skeleton + ops.relu(delta - skeleton * delta)
    return skeleton


def soft_cldice_loss(y_true, y_pred, epsilon: float = EPSILON):
    """1 - clDice: the harmonic mean of how much of the predicted skeleton lies on true vessels
    and how much of the true skeleton the prediction covers. A missed capillary costs as much
    of its skeleton as a missed trunk of the same length, where plain Dice counts pixels."""
    y, fov, p = split_target(y_true, y_pred)
    p = p * fov
    y = y * fov
    skeleton_p = soft_skeleton(p)
    skeleton_y = soft_skeleton(y)
    precision = (ops.sum(skeleton_p * y) + epsilon) / (ops.sum(skeleton_p) + epsilon)
    sensitivity = (ops.sum(skeleton_y * p) + epsilon) / (ops.sum(skeleton_y) + epsilon)
    return 1.0 - 2.0 * precision * sensitivity / (precision + sensitivity)


def skeleton_recall_loss(y_true, y_pred, epsilon: float = EPSILON):
    """1 - the share of the true vessels' centre lines that the prediction covers (Kirchhoff et
    al., Skeleton Recall Loss, ECCV 2024): clDice's sensitivity half, on the centre lines
    widened to a 5-px band inside the vessel as published. A capillary is all band, a trunk
    mostly not, so missing a capillary costs far more than its few pixels do in Dice. Only the
    labels are skeletonised, and no gradient runs through that, so it costs a few percent of a
    training step where clDice, which skeletonises the prediction, costs about half of one."""
    y, fov, p = split_target(y_true, y_pred)
    y = y * fov
    tube = ops.stop_gradient(_plus_dilate(_plus_dilate(soft_skeleton(y))) * y)
    return 1.0 - (ops.sum(tube * p) + epsilon) / (ops.sum(tube) + epsilon)


def make_loss(name: str = "dice", balance: float = 0.5, focal_alpha: float = 0.25,
              focal_gamma: float = 2.0, use_fov: bool = True) -> Callable:
    """The loss called `name`. Combined losses weigh their first term by `balance`; "cldice"
    is clDice's own mix (half soft Dice, half soft clDice), "bce_dice_cldice" puts BCE first,
    and "bce_dice_skeleton" adds the skeleton recall loss to "bce_dice", weighted like its Dice
    term (BCE : Dice : recall = 1 : 1 : 1 at the default balance, as published).

    With `use_fov=False` the FOV channel of the target is dropped: every pixel counts.
    """

    def focal(y_true, y_pred):
        return focal_loss(y_true, y_pred, focal_alpha, focal_gamma)

    def focal_dice(y_true, y_pred):
        return balance * focal(y_true, y_pred) + (1.0 - balance) * soft_dice_loss(y_true, y_pred)

    def bce_dice(y_true, y_pred):
        return balance * bce_loss(y_true, y_pred) + (1.0 - balance) * soft_dice_loss(y_true, y_pred)

    def dice_cldice(y_true, y_pred):
        return 0.5 * soft_dice_loss(y_true, y_pred) + 0.5 * soft_cldice_loss(y_true, y_pred)

    def bce_dice_skeleton(y_true, y_pred):
        return bce_dice(y_true, y_pred) + (1.0 - balance) * skeleton_recall_loss(y_true, y_pred)

    def bce_dice_cldice(y_true, y_pred):
        return balance * bce_loss(y_true, y_pred) + (1.0 - balance) * dice_cldice(y_true, y_pred)

    losses: dict[str, Callable] = {"dice": soft_dice_loss, "bce": bce_loss, "focal": focal,
                                   "focal_dice": focal_dice, "bce_dice": bce_dice,
                                   "cldice": dice_cldice, "bce_dice_cldice": bce_dice_cldice,
                                   "bce_dice_skeleton": bce_dice_skeleton}
    if name not in losses:
        raise ConfigError(f"loss: unknown {name!r}; valid names: {', '.join(sorted(losses))}")
    chosen = losses[name]
    if not use_fov:
        inside_only = chosen

        def chosen(y_true, y_pred):
            return inside_only(y_true[..., :1], y_pred)

    chosen.__name__ = f"{name}_loss"
    return chosen


LOSS_NAMES = ("bce", "bce_dice", "bce_dice_cldice", "bce_dice_skeleton", "cldice", "dice",
              "focal", "focal_dice")


