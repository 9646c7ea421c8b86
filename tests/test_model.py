"""Architectures: parameter count, open input size, mixed precision, registry, FLOPs, W-Net,
the fused batch norm, batch norm folded for inference."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from vesselseg.devices import dtype_policy  # noqa: E402
from vesselseg.errors import ConfigError  # noqa: E402
from vesselseg.model import (  # noqa: E402
    FusedBatchNormalization,
    architecture_names,
    folded_batch_norm_weights,
    forward_flops,
    get_model,
    set_layer_weights,
    size_multiple,
    trained_policy,
)

TINY = {"base_filters": 4, "depth": 2}


def test_classic_unet_parameter_count():
    model = get_model("unet", base_filters=64, depth=4, batch_norm=False)
    assert model.count_params() == 31_031_745
    assert round(model.count_params() / 1e6, 1) == 31.0
    assert model.output_shape == (None, None, None, 1)


def test_weights_trained_at_512_run_on_other_sizes():
    fixed = get_model(input_size=512, **TINY)
    assert fixed.input_shape == (None, 512, 512, 3)
    open_size = get_model(input_size=None, **TINY)
    open_size.set_weights(fixed.get_weights())
    clone = keras.models.clone_model(fixed, input_tensors=keras.Input((None, None, 3)))
    clone.set_weights(fixed.get_weights())
    rng = np.random.default_rng(0)
    reference = rng.random((1, 512, 512, 3), dtype=np.float32)
    expected = np.asarray(fixed(reference))
    for model in (open_size, clone):
        np.testing.assert_allclose(np.asarray(model(reference)), expected, rtol=1e-5, atol=1e-6)
    for side in (576, 1024):
        assert side % size_multiple(TINY["depth"]) == 0
        image = rng.random((1, side, side, 3), dtype=np.float32)
        for model in (open_size, clone):
            output = np.asarray(model(image))
            assert output.shape == (1, side, side, 1)
            assert output.dtype == np.float32
            assert np.all((output >= 0) & (output <= 1))


@pytest.mark.parametrize("architecture", architecture_names())
def test_default_model_is_open_size(architecture):
    model = get_model(architecture, **TINY)
    for side in (512, 576):
        assert model(np.zeros((1, side, side, 3), np.float32)).shape == (1, side, side, 1)
    rectangular = model(np.zeros((1, 64, 96, 3), np.float32))
    assert rectangular.shape == (1, 64, 96, 1)


@pytest.mark.parametrize("architecture", architecture_names())
def test_output_is_float32_under_mixed_bfloat16(architecture):
    with dtype_policy("mixed_bfloat16"):
        model = get_model(architecture, **TINY)
        logits = [layer for layer in model.layers if layer.name.endswith("logits")]
        assert logits and all(layer.compute_dtype == "bfloat16" for layer in logits)
        output = model(np.zeros((1, 64, 64, 3), np.float32))
        assert keras.backend.standardize_dtype(output.dtype) == "float32"
        assert model.output.dtype == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.parametrize("architecture", architecture_names())
def test_batch_norm_and_dropout_build(architecture):
    model = get_model(architecture, batch_norm=True, dropout=0.1, **TINY)
    names = [layer.name for layer in model.layers]
    assert any("_bn" in name for name in names)
    assert any("dropout" in name for name in names)
    assert model(np.zeros((2, 32, 32, 3), np.float32)).shape == (2, 32, 32, 1)


def test_unknown_architecture_lists_valid_names():
    assert "unet" in architecture_names()
    with pytest.raises(ConfigError) as info:
        get_model("resnet-9000", **TINY)
    message = str(info.value)
    assert "resnet-9000" in message
    for name in architecture_names():
        assert name in message


def test_forward_flops_positive_and_quadratic_in_side():
    model = get_model(**TINY)
    small = forward_flops(model, 64, 64)
    large = forward_flops(model, 128, 128)
    assert isinstance(small, int) and small > 0
    assert large == 4 * small
    assert forward_flops(model, 64, 128) == 2 * small


def test_forward_flops_hand_count():
    # depth 1, base 2, 1 input channel, 4x4 input: every convolution counted by hand
    model = get_model(base_filters=2, depth=1, input_channels=1)
    h = w = 4
    expected = 2 * (
        h * w * 9 * 1 * 2 + h * w * 9 * 2 * 2            # down0 conv1, conv2
        + (h // 2) * (w // 2) * 9 * 2 * 4 + (h // 2) * (w // 2) * 9 * 4 * 4  # bottleneck
        + (h // 2) * (w // 2) * 4 * 4 * 2                 # up0: 2x2 transposed conv, 4 -> 2
        + h * w * 9 * 4 * 2 + h * w * 9 * 2 * 2           # dec0 conv1 (after concat), conv2
        + h * w * 1 * 2 * 1                               # logits 1x1
    )
    assert forward_flops(model, h, w) == expected


def test_forward_flops_of_a_fixed_size_model():
    fixed = get_model(input_size=512, **TINY)
    assert forward_flops(fixed, 64, 64) == forward_flops(get_model(**TINY), 64, 64)


def test_wnet_is_two_unets_the_second_seeing_the_first_map():
    wnet = get_model("wnet", **TINY)
    first = get_model("unet", **TINY)
    second = get_model("unet", input_channels=4, **TINY)
    assert wnet.count_params() == first.count_params() + second.count_params()
    assert forward_flops(wnet, 64, 64) == sum(forward_flops(m, 64, 64) for m in (first, second))


def test_wnet_with_a_silent_second_unet_is_its_first_unet():
    """The second U-Net adds to the first's logits, so the loss reaches the first directly."""
    wnet = get_model("wnet", **TINY)
    unet = get_model("unet", **TINY)
    for layer in unet.layers:
        if layer.weights:
            layer.set_weights(wnet.get_layer(f"first_{layer.name}").get_weights())
    silent = wnet.get_layer("second_logits")
    silent.set_weights([np.zeros_like(w) for w in silent.get_weights()])
    image = np.random.default_rng(0).random((1, 64, 64, 3), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(wnet(image)), np.asarray(unet(image)), atol=1e-6)
    silent.set_weights([np.ones_like(w) for w in silent.get_weights()])
    assert not np.allclose(np.asarray(wnet(image)), np.asarray(unet(image)), atol=1e-3)


def _with_trained_batch_norm(model: keras.Model, seed: int = 0) -> keras.Model:
    """Give every batch norm statistics and an affine map far from the identity, as training
    would, so that folding them is really tested."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(0, 0.5, shape))
            layer.moving_variance.assign(rng.uniform(0.2, 3.0, shape))
            if layer.scale:
                layer.gamma.assign(rng.uniform(0.5, 2.0, shape))
            if layer.center:
                layer.beta.assign(rng.normal(0, 0.5, shape))
    return model


@pytest.mark.parametrize("architecture", architecture_names())
def test_folding_batch_norm_keeps_the_function(architecture):
    keras.utils.set_random_seed(0)
    trained = _with_trained_batch_norm(get_model(architecture, batch_norm=True, **TINY))
    folded = get_model(architecture, batch_norm=False, **TINY)
    weights = folded_batch_norm_weights(trained)
    assert set(weights) == {layer.name for layer in folded.layers if layer.weights}
    set_layer_weights(folded, weights)
    image = np.random.default_rng(1).random((2, 64, 64, 3), dtype=np.float32)
    # float32 rounding only: the folded kernels round differently (a W-Net stacks two U-Nets)
    np.testing.assert_allclose(np.asarray(folded(image)),
                               np.asarray(trained(image, training=False)), atol=1e-4)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)


def _conv_then_norm(conv_bias: bool, norm: str | None = "block_bn1", **norm_options):
    """A convolution named like the U-Net's, followed by a batch norm named `norm` (or none)."""
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=conv_bias, name="block_conv1")(inputs)
    if norm:
        x = keras.layers.BatchNormalization(name=norm, **norm_options)(x)
    return keras.Model(inputs, x)


@pytest.mark.parametrize("options", [{"center": False}, {"scale": False}, {"epsilon": 0.5}])
def test_folding_handles_a_biased_convolution_and_a_partial_batch_norm(options):
    trained = _with_trained_batch_norm(_conv_then_norm(True, **options), seed=2)
    conv = trained.get_layer("block_conv1")
    kernel, _ = conv.get_weights()
    conv.set_weights([kernel, np.full(4, 0.3, np.float32)])
    folded = _conv_then_norm(True, norm=None)
    set_layer_weights(folded, folded_batch_norm_weights(trained))
    image = np.random.default_rng(3).random((1, 16, 16, 3), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(folded(image)),
                               np.asarray(trained(image, training=False)), atol=1e-5)


def test_a_batch_norm_after_no_named_convolution_is_refused_not_dropped():
    model = _conv_then_norm(False, norm="stray_norm")
    with pytest.raises(ConfigError, match="stray_norm"):
        folded_batch_norm_weights(model)


def test_a_model_without_batch_norm_folds_to_its_own_weights():
    model = get_model("unet", batch_norm=False, **TINY)
    weights = folded_batch_norm_weights(model)
    assert set(weights) == {layer.name for layer in model.layers if layer.weights}
    for layer in model.layers:
        for value, original in zip(weights.get(layer.name, []), layer.get_weights(), strict=True):
            np.testing.assert_array_equal(value, original)


def test_the_trained_policy_survives_saving_and_loading(tmp_path):
    from vesselseg.backends import load_keras_model

    with dtype_policy("mixed_bfloat16"):
        model = get_model("unet", **TINY)
    model.save(tmp_path / "model.keras")
    assert trained_policy(load_keras_model(tmp_path / "model.keras")) == "mixed_bfloat16"


def test_half_precision_storage_reports_float32_for_inference(tmp_path):
    """A plain float16 model is how `experiments.ensemble` stores weights, not how it trained:
    inference must not compute in float16 on a CPU."""
    from vesselseg.backends import load_keras_model

    with dtype_policy("float16"):
        model = get_model("unet", **TINY)
    model.save(tmp_path / "model.keras")
    loaded = load_keras_model(tmp_path / "model.keras")
    assert loaded.get_layer("down0_conv1").kernel.dtype == "float16"
    assert trained_policy(loaded) == "float32"


def _norm_pair(**options):
    """A Keras batch norm and the fused one, built alike (same initial variables)."""
    return keras.layers.BatchNormalization(**options), FusedBatchNormalization(**options)


def test_fused_batch_norm_trains_like_keras_batch_norm():
    import tensorflow as tf

    image = np.random.default_rng(4).normal(2.0, 3.0, (2, 8, 8, 5)).astype(np.float32)
    results = []
    for norm in _norm_pair(momentum=0.9):
        norm.build(image.shape)
        norm.gamma.assign(np.linspace(0.5, 1.5, 5))
        norm.beta.assign(np.linspace(-1.0, 1.0, 5))
        x = tf.constant(image)
        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs = norm(x, training=True)
            loss = tf.reduce_sum(outputs * tf.range(5, dtype=tf.float32))
        grads = tape.gradient(loss, [x, norm.gamma, norm.beta])
        results.append([outputs, *grads, norm.moving_mean, norm.moving_variance,
                        norm(x, training=False)])
    for keras_value, fused_value in zip(*results, strict=True):
        # float32 rounding: the gamma gradient, 0 in exact arithmetic, sums 128 terms
        np.testing.assert_allclose(np.asarray(fused_value), np.asarray(keras_value),
                                   rtol=1e-5, atol=1e-4)


def test_fused_batch_norm_keeps_bfloat16_maps_close_to_keras():
    image = np.random.default_rng(5).normal(0.0, 2.0, (2, 16, 16, 8)).astype(np.float32)
    with dtype_policy("mixed_bfloat16"):
        keras_norm, fused_norm = _norm_pair()
        expected, outputs = (norm(image, training=True) for norm in (keras_norm, fused_norm))
    assert outputs.dtype == expected.dtype == "bfloat16"
    np.testing.assert_allclose(np.asarray(outputs, np.float32), np.asarray(expected, np.float32),
                               atol=0.05)
    np.testing.assert_allclose(np.asarray(fused_norm.moving_variance),
                               np.asarray(keras_norm.moving_variance), rtol=1e-3)


def test_a_frozen_fused_batch_norm_uses_its_moving_statistics():
    keras_norm, fused_norm = _norm_pair()
    image = np.random.default_rng(6).normal(1.0, 2.0, (2, 8, 8, 3)).astype(np.float32)
    for norm in (keras_norm, fused_norm):
        norm.build(image.shape)
        norm.moving_mean.assign([1.0, 2.0, 3.0])
        norm.trainable = False
    np.testing.assert_allclose(np.asarray(fused_norm(image, training=True)),
                               np.asarray(keras_norm(image, training=True)), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(fused_norm.moving_mean), [1.0, 2.0, 3.0])


def test_models_with_the_fused_batch_norm_load_in_safe_mode(tmp_path):
    from vesselseg.backends import load_keras_model

    model = get_model("unet", batch_norm=True, **TINY)
    assert any(isinstance(layer, FusedBatchNormalization) for layer in model.layers)
    model.save(tmp_path / "model.keras")
    loaded = load_keras_model(tmp_path / "model.keras")
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in model.layers]
    image = np.random.default_rng(7).random((1, 32, 32, 3), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(loaded(image)), np.asarray(model(image)), atol=1e-6)


@pytest.mark.slow
def test_a_fresh_process_loads_a_fused_batch_norm_model(tmp_path):
    """`load_keras_model` registers the layer itself: `experiments.release` loads a
    run in a process that never imported `vesselseg.model`, and failed there before."""
    import subprocess
    import sys

    get_model("unet", batch_norm=True, **TINY).save(tmp_path / "model.keras")
    code = ("from vesselseg.backends import load_keras_model; "
            f"print(type(load_keras_model({str(tmp_path / 'model.keras')!r})).__name__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("Functional")
