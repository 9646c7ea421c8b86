"""tf.data pipelines from a preprocessed manifest: decode, normalise, cache, shuffle, augment,
batch, prefetch. Augmentation is seeded per element (stateless ops keyed on the element index), so
a run is reproducible whatever the parallelism.

Elements are (image float32 [0,1] HxWx3, target float32 HxWx2 = [vessels, FOV]).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import tensorflow as tf

from .config import AugmentConfig
from .errors import DatasetError
from .io import read_levels

AUTOTUNE = tf.data.AUTOTUNE


def split_rows(manifest: pd.DataFrame, split: str) -> pd.DataFrame:
    rows = manifest[manifest["split"] == split]
    if rows.empty:
        raise DatasetError(f"the manifest has no {split!r} images (splits present: "
                           f"{', '.join(sorted(manifest['split'].unique()))})")
    return rows


def _decode(image_path, vessels_path, fov_path, gray=False, soft_labels=False):
    """(image, [vessels, FOV]); vessels are the binary mask (coverage >= half a pixel), or with
    `soft_labels` the coverage itself, which keeps capillaries thinner than a pixel."""
    image = tf.io.decode_png(tf.io.read_file(image_path), channels=3)
    if gray:
        image = image[..., :1]
    vessels = tf.io.decode_png(tf.io.read_file(vessels_path), channels=1)
    fov = tf.io.decode_png(tf.io.read_file(fov_path), channels=1)
    image = tf.cast(image, tf.float32) / 255.0
    vessels = (tf.cast(vessels, tf.float32) / 255.0 if soft_labels
               else tf.cast(vessels >= 128, tf.float32))
    return image, tf.concat([vessels, tf.cast(fov >= 128, tf.float32)], -1)


def _affine(stack, angle, scale, size, shift=(0.0, 0.0), out_size=None):
    """Rotate by `angle` (radians) and zoom by `scale` about the centre moved by `shift`
    (pixels of the input), bilinear, zero fill; the output is `out_size` square (default: the
    input's `size`), its centre taken from the input's (moved) centre."""
    out_size = size if out_size is None else out_size
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    centre = (tf.cast(size, tf.float32) - 1.0) / 2.0
    out_centre = (tf.cast(out_size, tf.float32) - 1.0) / 2.0
    # output->input mapping: x_in = a0 x + a1 y + a2, y_in = b0 x + b1 y + b2
    a2 = centre - cos * out_centre + sin * out_centre + shift[0]
    b2 = centre - sin * out_centre - cos * out_centre + shift[1]
    transform = tf.stack([cos, -sin, a2, sin, cos, b2, 0.0, 0.0])[None]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=stack[None], transforms=transform, output_shape=tf.stack([out_size, out_size]),
        interpolation="BILINEAR", fill_mode="CONSTANT", fill_value=0.0)[0]


def augment(image, target, seed, config: AugmentConfig, soft_labels: bool = False):
    """Identical geometric changes to image and masks; photometric changes to the image only.
    Resampled vessels are binarised again at 0.5 unless `soft_labels` (then they stay the
    interpolated coverage)."""
    seeds = tf.random.experimental.stateless_split(seed, num=12)
    uniform = lambda i, lo=0.0, hi=1.0: tf.random.stateless_uniform([], seeds[i], lo, hi)  # noqa: E731
    stack = tf.concat([image, target], axis=-1)
    if config.flips:
        stack = tf.cond(uniform(0) < 0.5, lambda: tf.reverse(stack, [1]), lambda: stack)
        stack = tf.cond(uniform(1) < 0.5, lambda: tf.reverse(stack, [0]), lambda: stack)
    if config.rot90:
        k = tf.random.stateless_uniform([], seeds[2], 0, 4, dtype=tf.int32)
        stack = tf.image.rot90(stack, k)
    if config.rotation_degrees or config.scale_range or config.zoom != 1.0 or config.window:
        angle = uniform(3, -config.rotation_degrees, config.rotation_degrees) * math.pi / 180.0
        scale = uniform(4, config.zoom - config.scale_range, config.zoom + config.scale_range)
        size = tf.shape(stack)[0]
        out_size = config.window or size
        shift = (0.0, 0.0)
        if config.pan:  # the view (out_size / scale wide) may sit anywhere inside the photo
            view = tf.cast(out_size, tf.float32) / scale
            room = tf.maximum(tf.cast(size, tf.float32) - view, 0.0) / 2.0
            pan_seeds = tf.random.experimental.stateless_split(seeds[4], num=2)
            shift = (tf.random.stateless_uniform([], pan_seeds[0], -1.0, 1.0) * room,
                     tf.random.stateless_uniform([], pan_seeds[1], -1.0, 1.0) * room)
        stack = _affine(stack, angle, scale, size, shift, out_size)
    image, vessels, fov = stack[..., :-2], stack[..., -2:-1], stack[..., -1:]
    vessels = tf.clip_by_value(vessels, 0.0, 1.0) if soft_labels else tf.cast(vessels >= 0.5,
                                                                                tf.float32)
    fov = tf.cast(fov >= 0.5, tf.float32)
    if config.brightness:
        image = image + uniform(5, -config.brightness, config.brightness)
    if config.contrast:
        mean = tf.reduce_sum(image * fov, [0, 1]) / tf.maximum(tf.reduce_sum(fov), 1.0)
        image = (image - mean) * uniform(6, 1 - config.contrast, 1 + config.contrast) + mean
    colour = image.shape[-1] != 1  # saturation and hue leave a gray image as it is
    if config.saturation:
        image = tf.clip_by_value(image, 0, 1)  # for gray too, so both paths stay identical
        if colour:
            image = tf.image.adjust_saturation(
                image, uniform(7, 1 - config.saturation, 1 + config.saturation))
    if config.hue and colour:
        image = tf.image.adjust_hue(image, uniform(8, -config.hue, config.hue))
    if config.gamma:
        # x**g as exp(g log x): the same values, 4x cheaper than tf.pow on this CPU (1.4 vs
        # 5.6 ms per 512x512 RGB image), and augmentation shares the cores with the model
        exponent = tf.exp(uniform(9, -config.gamma, config.gamma))
        image = tf.exp(exponent * tf.math.log(tf.clip_by_value(image, 1e-6, 1.0)))
    if config.blur_probability:
        sigma = uniform(10, 0.5, 1.5)
        image = tf.cond(uniform(11) < config.blur_probability,
                        lambda: _gaussian_blur(image, sigma), lambda: image)
    image = tf.clip_by_value(image, 0.0, 1.0) * fov
    return image, tf.concat([vessels * fov, fov], axis=-1)


def _gaussian_blur(image, sigma):
    """Blur with a 7-tap Gaussian: mimics softer optics and lower-resolution cameras."""
    taps = tf.range(-3.0, 4.0)
    kernel = tf.exp(-(taps**2) / (2.0 * sigma**2))
    kernel = kernel / tf.reduce_sum(kernel)
    kernel_2d = tf.tile((kernel[:, None] * kernel[None, :])[:, :, None, None],
                        [1, 1, image.shape[-1], 1])
    return tf.nn.depthwise_conv2d(image[None], kernel_2d, [1, 1, 1, 1], "SAME")[0]


def make_dataset(rows: pd.DataFrame, batch_size: int, training: bool, seed: int = 0,
                 augment_config: AugmentConfig | None = None,
                 cache: bool = True, autotune: bool = True,
                 gray: bool = False, soft_labels: bool = False) -> tf.data.Dataset:
    """Batched (image, target) pairs; training streams repeat forever, shuffled and augmented.

    `autotune=False` turns tf.data's autotuner off: on a CPU-only machine its threads compete with
    the model's for the same cores (measured on 2 cores: 2.9 -> 3.5 img/s with augmentation, see
    `python -m benchmarks.pipeline`). With a GPU the cores are free, so keep it on.
    `soft_labels`: vessel targets are each pixel's annotation coverage, not the binary mask.
    """
    paths = (list(rows["image"]), list(rows["vessels"]), list(rows["fov"]))
    dataset = tf.data.Dataset.from_tensor_slices(paths)
    dataset = dataset.map(lambda *paths: _decode(*paths, gray=gray, soft_labels=soft_labels),
                          num_parallel_calls=AUTOTUNE, deterministic=True)
    if cache:
        dataset = dataset.cache()
    if training:
        dataset = dataset.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True).repeat()
        if augment_config is not None:
            dataset = dataset.enumerate().map(
                lambda index, pair: augment(pair[0], pair[1],
                                            tf.stack([tf.cast(seed, tf.int64), index]),
                                            augment_config, soft_labels),
                num_parallel_calls=AUTOTUNE, deterministic=True)
    dataset = dataset.batch(batch_size, drop_remainder=training)
    if gray:
        dataset = dataset.map(lambda image, target: (tf.tile(image, [1, 1, 1, 3]), target),
                              num_parallel_calls=AUTOTUNE, deterministic=True)
    dataset = dataset.prefetch(AUTOTUNE)
    if not autotune:
        options = tf.data.Options()
        options.autotune.enabled = False
        dataset = dataset.with_options(options)
    return dataset


def labels_are_binary(rows: pd.DataFrame, sample: int = 8) -> bool:
    """True when the first `sample` vessel PNGs hold only 0 and 255: no coverage for
    `soft_labels` to use (a folder preprocessed before coverage was kept)."""
    for path in list(rows["vessels"])[:sample]:
        values = read_levels(path)
        if np.any((values > 0) & (values < 255)):
            return False
    return True


def steps_per_epoch(rows: pd.DataFrame, batch_size: int, requested: int = 0) -> int:
    return requested or max(1, math.ceil(len(rows) / batch_size))
