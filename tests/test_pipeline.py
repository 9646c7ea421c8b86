import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from vesselseg.config import AugmentConfig
from vesselseg.errors import DatasetError
from vesselseg.io import write_png
from vesselseg.pipeline import augment, labels_are_binary, make_dataset, split_rows, steps_per_epoch
from vesselseg.preprocess import load_manifest


def test_batches_have_image_and_target_with_fov(synthetic_preprocessed):
    rows = split_rows(load_manifest(synthetic_preprocessed), "train")
    images, targets = next(iter(make_dataset(rows, 2, training=True, augment_config=None)))
    assert images.shape == (2, 128, 128, 3) and images.dtype == tf.float32
    assert targets.shape == (2, 128, 128, 2)
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0
    assert set(np.unique(targets.numpy())) <= {0.0, 1.0}


def test_training_stream_is_reproducible_for_a_seed(synthetic_preprocessed):
    rows = split_rows(load_manifest(synthetic_preprocessed), "train")
    first = [b[0].numpy() for b in make_dataset(rows, 2, True, seed=5,
                                                augment_config=AugmentConfig()).take(3)]
    second = [b[0].numpy() for b in make_dataset(rows, 2, True, seed=5,
                                                 augment_config=AugmentConfig()).take(3)]
    other = [b[0].numpy() for b in make_dataset(rows, 2, True, seed=6,
                                                augment_config=AugmentConfig()).take(3)]
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_turning_autotune_off_keeps_the_stream(synthetic_preprocessed):
    """The CPU setting changes only tf.data's threading, never what the model sees."""
    rows = split_rows(load_manifest(synthetic_preprocessed), "train")
    tuned, fixed = (make_dataset(rows, 2, True, seed=5, augment_config=AugmentConfig(),
                                 autotune=autotune) for autotune in (True, False))
    assert not fixed.options().autotune.enabled
    assert all(np.array_equal(a[0].numpy(), b[0].numpy())
               for a, b in zip(tuned.take(3), fixed.take(3)))


def coverage_rows(folder, coverage: np.ndarray) -> pd.DataFrame:
    """One sample whose vessel PNG holds `coverage` (uint8), with a gray image and a full FOV."""
    paths = {"image": folder / "image.png", "vessels": folder / "vessels.png",
             "fov": folder / "fov.png"}
    write_png(paths["image"], np.full((*coverage.shape, 3), 90, np.uint8))
    write_png(paths["vessels"], coverage)
    write_png(paths["fov"], np.ones(coverage.shape, bool))
    return pd.DataFrame([{k: str(v) for k, v in paths.items()}])


def test_soft_labels_are_the_coverage_and_binary_labels_its_half_threshold(tmp_path):
    coverage = np.tile(np.array([0, 1, 64, 127, 128, 200, 254, 255], np.uint8), (8, 1))
    rows = coverage_rows(tmp_path, coverage)
    soft, binary = (next(iter(make_dataset(rows, 1, training=False, soft_labels=flag)))[1]
                    .numpy()[0, ..., 0] for flag in (True, False))
    np.testing.assert_allclose(soft, coverage / 255.0, atol=1e-6)
    np.testing.assert_array_equal(binary, coverage >= 128)
    assert not labels_are_binary(rows)
    assert labels_are_binary(coverage_rows(tmp_path, np.where(coverage >= 128, 255, 0)
                                           .astype(np.uint8)))


def test_augmentation_keeps_soft_labels_soft():
    """A rotation resamples a thin line: binary labels are re-thresholded to 0/1, soft labels
    keep the interpolated values and about the line's mass."""
    mask = np.zeros((64, 64, 1), np.float32)
    mask[:, 31] = 0.5  # a capillary half a pixel wide
    target = tf.constant(np.concatenate([mask, np.ones_like(mask)], -1))
    image = tf.zeros((64, 64, 1))
    config = AugmentConfig(flips=False, rot90=False, rotation_degrees=10, scale_range=0,
                           brightness=0, contrast=0, gamma=0, hue=0, saturation=0)
    seed = tf.constant([0, 3], tf.int64)
    soft = augment(image, target, seed, config, soft_labels=True)[1].numpy()[..., 0]
    binary = augment(image, target, seed, config)[1].numpy()[..., 0]
    assert set(np.unique(binary)) <= {0.0, 1.0}
    assert ((soft > 0) & (soft < 1)).any() and soft.max() <= 1.0
    assert soft.sum() == pytest.approx(mask.sum(), rel=0.15)  # corners rotate out of view


def test_augmentation_moves_image_and_masks_together():
    # the image *is* the vessel mask: after any geometric change they must still coincide
    rng = np.random.default_rng(0)
    mask = (rng.random((64, 64, 1)) > 0.7).astype(np.float32)
    mask = tf.constant(np.kron(mask[:16, :16, 0], np.ones((4, 4)))[..., None], tf.float32)
    image = tf.concat([mask, mask, mask], -1)
    target = tf.concat([mask, tf.ones_like(mask)], -1)
    geometric = AugmentConfig(brightness=0, contrast=0, gamma=0, hue=0, saturation=0)
    for index in range(8):
        out_image, out_target = augment(image, target, tf.constant([1, index], tf.int64),
                                        geometric)
        vessels = out_target[..., 0].numpy()
        fov = out_target[..., 1].numpy() > 0
        agreement = ((out_image[..., 0].numpy() >= 0.5) == (vessels > 0.5))[fov].mean()
        assert agreement > 0.97


def test_gray_path_gives_the_same_batches(tmp_path):
    """Green-CLAHE images are one channel repeated: augmenting one channel and repeating it
    after must feed the model exactly what the three-channel path feeds it."""
    from vesselseg.config import PreprocessConfig
    from vesselseg.datasets import write_synthetic_dataset
    from vesselseg.preprocess import load_preprocess_config, preprocess_dataset

    raw = write_synthetic_dataset(tmp_path / "raw", count=4, size=64, seed=1)
    out = tmp_path / "gray"
    preprocess_dataset("folder", raw, out, PreprocessConfig(size=64, enhancement="green_clahe",
                                                            val_fraction=0.25), progress=False)
    assert load_preprocess_config(out).gray
    rows = split_rows(load_manifest(out), "train")
    for config in (AugmentConfig(hue=0.05, saturation=0.2, blur_probability=0.5),
                   # no gamma clip: saturation's clip must still happen on the gray path
                   AugmentConfig(saturation=0.2, gamma=0.0, contrast=0.5, blur_probability=1.0)):
        colour, gray = (make_dataset(rows, 2, True, seed=2, augment_config=config, gray=gray)
                        for gray in (False, True))
        assert gray.element_spec[0].shape[-1] == 3
        for (image3, target3), (image1, target1) in zip(colour.take(4), gray.take(4)):
            np.testing.assert_allclose(image1.numpy(), image3.numpy(), atol=1e-6)
            np.testing.assert_array_equal(target1.numpy(), target3.numpy())


def test_photometric_augmentation_keeps_outside_fov_black():
    image = tf.fill((32, 32, 3), 0.5)
    fov = np.zeros((32, 32, 1), np.float32)
    fov[8:24, 8:24] = 1
    target = tf.concat([tf.zeros((32, 32, 1)), tf.constant(fov)], -1)
    out, _ = augment(image, target, tf.constant([0, 1], tf.int64),
                     AugmentConfig(flips=False, rot90=False, rotation_degrees=0, scale_range=0))
    assert float(tf.reduce_max(out[:4])) == 0.0


def test_missing_split_is_a_clear_error(synthetic_preprocessed):
    manifest = load_manifest(synthetic_preprocessed)
    with pytest.raises(DatasetError, match="no 'nope' images"):
        split_rows(manifest, "nope")


def test_steps_per_epoch():
    import pandas as pd

    rows = pd.DataFrame({"a": range(17)})
    assert steps_per_epoch(rows, 4) == 5
    assert steps_per_epoch(rows, 4, requested=20) == 20


def _plain(**geometry) -> AugmentConfig:
    """Augmentation with only the given geometry: no flips, rotation or photometric change."""
    return AugmentConfig(flips=False, rot90=False, rotation_degrees=0, scale_range=0.0,
                         brightness=0, contrast=0, gamma=0, hue=0, saturation=0, **geometry)


def _gradient_image() -> tf.Tensor:
    """A 64x64 image dark on the left, bright on the right: where a view sits shows in its mean."""
    return tf.constant(np.tile(np.linspace(0, 1, 64, dtype=np.float32)[None, :, None], (64, 1, 3)))


def _gradient_views(count: int = 8, **geometry) -> list[float]:
    """Mean brightness of augmented views of the gradient image."""
    image = _gradient_image()
    config = _plain(**geometry)
    return [float(tf.reduce_mean(augment(image, tf.ones((64, 64, 2)),
                                          tf.constant([0, index], tf.int64), config)[0]))
            for index in range(count)]


def test_zoom_magnifies_about_the_centre_and_pan_moves_the_view():
    centred = _gradient_views(zoom=2.0, pan=False)
    assert np.allclose(centred, 0.5, atol=0.01)  # the middle half, still symmetric
    panned = _gradient_views(zoom=2.0, pan=True)
    # a 2x view is half the image wide: its centre moves by up to a quarter either way
    assert min(panned) < 0.4 and max(panned) > 0.6
    assert all(0.25 - 0.01 <= mean <= 0.75 + 0.01 for mean in panned)


def test_zoom_runs_the_affine_step_without_other_geometry():
    """zoom alone (no rotation, no scale range) still magnifies."""
    image = _gradient_image()
    out = augment(image, tf.ones((64, 64, 2)), tf.constant([0, 0], tf.int64), _plain(zoom=2.0))[0]
    assert abs(float(out[0, 0, 0]) - 0.25) < 0.02 and abs(float(out[0, -1, 0]) - 0.75) < 0.02


def test_zoom_and_pan_run_inside_the_tf_data_pipeline(synthetic_preprocessed):
    """Augmentation runs in graph mode there: zoom and pan must trace, and stay reproducible."""
    rows = split_rows(load_manifest(synthetic_preprocessed), "train")
    config = AugmentConfig(zoom=1.125, pan=True, scale_range=0.2)
    first, second = ([b[0].numpy() for b in make_dataset(rows, 2, True, seed=3,
                                                         augment_config=config).take(2)]
                     for _ in range(2))
    plain = [b[0].numpy() for b in make_dataset(rows, 2, True, seed=3,
                                                augment_config=AugmentConfig(
                                                    scale_range=0.2)).take(2)]
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert not all(np.array_equal(a, b) for a, b in zip(first, plain))


def test_window_views_are_the_stored_pixels_themselves():
    """A centred 32-px window of a 64-px image is its middle, pixel for pixel: no resampling."""
    rng = np.random.default_rng(0)
    image = tf.constant(rng.random((64, 64, 1), dtype=np.float32))
    target = tf.constant(np.stack([rng.random((64, 64)) > 0.5, np.ones((64, 64))], -1),
                         tf.float32)
    view, view_target = augment(image, target, tf.constant([0, 0], tf.int64), _plain(window=32))
    assert view.shape == (32, 32, 1) and view_target.shape == (32, 32, 2)
    np.testing.assert_array_equal(view.numpy(), image.numpy()[16:48, 16:48])
    np.testing.assert_array_equal(view_target.numpy(), target.numpy()[16:48, 16:48])


def test_window_views_pan_across_the_whole_stored_image():
    means = _gradient_views(count=12, window=32, pan=True)
    # a half-wide view's centre moves by up to a quarter of the image either way, never outside
    assert min(means) < 0.4 and max(means) > 0.6
    assert all(0.25 - 0.01 <= mean <= 0.75 + 0.01 for mean in means)


def test_window_views_batch_inside_the_tf_data_pipeline(synthetic_preprocessed):
    rows = split_rows(load_manifest(synthetic_preprocessed), "train")
    config = AugmentConfig(window=64, pan=True, scale_range=0.2)
    images, targets = next(iter(make_dataset(rows, 2, True, seed=0, augment_config=config)))
    assert images.shape == (2, 64, 64, 3) and targets.shape == (2, 64, 64, 2)
