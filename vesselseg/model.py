"""Segmentation architectures, found by name. `get_model` is pure: config in, new Keras model out.

The U-Net follows the classic design: per level two 3x3 convolutions with ReLU, 2x2 max pooling
down, 2x2 transposed convolution up, skip connections by concatenation, and a 1x1 convolution with
a sigmoid giving one vessel-probability channel. Spatial dimensions are left open, so weights
trained at 512x512 run on any size that is a multiple of 2**depth.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
from keras import layers

from .errors import ConfigError

Builder = Callable[..., keras.Model]
_ARCHITECTURES: dict[str, Builder] = {}


def register_architecture(name: str) -> Callable[[Builder], Builder]:
    def decorate(func: Builder) -> Builder:
        _ARCHITECTURES[name] = func
        return func

    return decorate


def architecture_names() -> list[str]:
    return sorted(_ARCHITECTURES)


@keras.saving.register_keras_serializable(package="vesselseg")
class FusedBatchNormalization(layers.BatchNormalization):
    """Keras batch norm whose training step runs TensorFlow's fused kernel in the input's dtype.

    Keras 3 normalises in float32 in separate ops, casting bfloat16 maps to float32 and back, so
    on a CPU training with batch norm ran 2.4x slower in mixed bfloat16 (1.4x in float32) than
    this one op, which keeps the statistics in float32 but reads and writes the maps once, in
    their own dtype. Same variables, same maths (to rounding): inference, other backends, masks
    and synchronised batch norm take Keras's own path."""

    def call(self, inputs, training=None, mask=None):
        if (not training or not self.trainable or mask is not None or self.synchronized
                or self.renorm or len(inputs.shape) != 4 or self.axis not in (-1, 3)
                or self.epsilon < 1.001e-5 or keras.backend.backend() != "tensorflow"):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        channels = inputs.shape[-1]
        gamma = self.gamma if self.scale else tf.ones((channels,))
        beta = self.beta if self.center else tf.zeros((channels,))
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, tf.cast(gamma, "float32"), tf.cast(beta, "float32"),
            epsilon=self.epsilon, is_training=True)[:3]
        # the kernel hands back the unbiased variance; Keras averages the biased one
        count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), "float32")
        variance = variance * (count - 1.0) / count
        for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
            moving.assign(moving * self.momentum
                          + tf.cast(batch, moving.dtype) * (1.0 - self.momentum))
        return outputs


def portable_model(model: keras.Model) -> keras.Model:
    """The same model (same weights, same function) built from Keras's own layers only, so its
    file loads with plain `keras.saving.load_model`, without importing vesselseg: the fused
    batch norm above is a training-speed detail, not part of the model."""

    def clone(layer):
        kind = (layers.BatchNormalization if isinstance(layer, FusedBatchNormalization)
                else type(layer))
        return kind.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def save_portable(model: keras.Model, path: str | Path) -> Path:
    """Save `portable_model(model)` (no optimizer state) atomically: a temporary .keras file
    beside `path`, then renamed over it."""
    import os

    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.part.keras")
    try:
        portable_model(model).save(tmp, include_optimizer=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _conv_block(x, filters: int, batch_norm: bool, dropout: float, name: str):
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=not batch_norm,
                          kernel_initializer="he_normal", name=f"{name}_conv{i}")(x)
        if batch_norm:
            x = FusedBatchNormalization(momentum=0.9, name=f"{name}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
        if dropout and i == 1:
            x = layers.SpatialDropout2D(dropout, name=f"{name}_dropout")(x)
    return x


def unet_logits(x, base_filters: int, depth: int, batch_norm: bool, dropout: float,
                 prefix: str = ""):
    """The U-Net from input to its one-channel logits; `prefix` keeps two of them apart."""
    skips = []
    for level in range(depth):
        x = _conv_block(x, base_filters * 2**level, batch_norm, dropout, f"{prefix}down{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"{prefix}pool{level}")(x)
    x = _conv_block(x, base_filters * 2**depth, batch_norm, dropout, f"{prefix}bottleneck")
    for level in reversed(range(depth)):
        filters = base_filters * 2**level
        x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same",
                                   name=f"{prefix}up{level}")(x)
        x = layers.Concatenate(name=f"{prefix}skip{level}")([x, skips[level]])
        x = _conv_block(x, filters, batch_norm, dropout, f"{prefix}dec{level}")
    return layers.Conv2D(1, 1, name=f"{prefix}logits")(x)


def _probability(logits):
    # float32 output even under a mixed-precision policy: losses and thresholds need the range.
    return layers.Activation("sigmoid", dtype="float32", name="vessel_probability")(logits)


@register_architecture("unet")
def unet(base_filters: int = 64, depth: int = 4, batch_norm: bool = False, dropout: float = 0.0,
         input_channels: int = 3, input_size: int | None = None) -> keras.Model:
    """Classic U-Net; base 64 / depth 4 / no batch norm is the 31.0M-parameter original."""
    inputs = keras.Input(shape=(input_size, input_size, input_channels), name="image")
    logits = unet_logits(inputs, base_filters, depth, batch_norm, dropout)
    return keras.Model(inputs, _probability(logits), name=f"unet_f{base_filters}_d{depth}")


#: Layer-name prefixes of a W-Net's two U-Nets.
_FIRST, _SECOND = "first_", "second_"


@register_architecture("wnet")
def wnet(base_filters: int = 8, depth: int = 4, batch_norm: bool = False, dropout: float = 0.0,
         input_channels: int = 3, input_size: int | None = None) -> keras.Model:
    """Two U-Nets in a row, after LWNet's W-Net: the second sees the image and the first's
    vessel map, and adds a correction to the first's logits. Through that sum the loss trains
    the first U-Net directly as well, so no second output is needed. Twice a U-Net's cost."""
    inputs = keras.Input(shape=(input_size, input_size, input_channels), name="image")
    first = unet_logits(inputs, base_filters, depth, batch_norm, dropout, _FIRST)
    first_map = layers.Activation("sigmoid", name="first_probability")(first)
    seen = layers.Concatenate(name="image_and_first_map")([inputs, first_map])
    correction = unet_logits(seen, base_filters, depth, batch_norm, dropout, _SECOND)
    logits = layers.Add(name="logits")([first, correction])
    return keras.Model(inputs, _probability(logits), name=f"wnet_f{base_filters}_d{depth}")


def wnet_weights_from_unet(unet_weights: dict[str, list]) -> dict[str, list]:
    """A U-Net's weights by layer name, placed in a W-Net of the same width: the first U-Net
    takes them and the second's output layer starts at zero, so the W-Net starts with no
    correction, giving exactly the U-Net's maps."""
    grown = {f"{_FIRST}{name}": values for name, values in unet_weights.items()}
    grown[f"{_SECOND}logits"] = [np.zeros_like(values) for values in unet_weights["logits"]]
    return grown


def get_model(architecture: str = "unet", **kwargs) -> keras.Model:
    """Build a new model by architecture name; an unknown name lists the valid ones."""
    check_architecture(architecture)
    return _ARCHITECTURES[architecture](**kwargs)


def check_architecture(name: str) -> None:
    """Raise a ConfigError listing the valid names unless `name` is a registered architecture."""
    if name not in _ARCHITECTURES:
        raise ConfigError(f"architecture: unknown {name!r}; valid names: "
                          f"{', '.join(architecture_names())}")


def size_multiple(depth: int) -> int:
    """Input sides must be a multiple of this for the model to run."""
    return 2**depth


def forward_flops(model: keras.Model, height: int, width: int) -> int:
    """FLOPs (2 x multiply-adds) of the convolutions in one forward pass at height x width."""
    probe = keras.models.clone_model(model, input_tensors=keras.Input((height, width,
                                                                         model.input_shape[-1])))
    total = 0
    for layer in probe.layers:
        if isinstance(layer, layers.Conv2DTranspose):
            _, h, w, c_in = layer.input.shape
            total += 2 * h * w * layer.kernel_size[0] * layer.kernel_size[1] * c_in * layer.filters
        elif isinstance(layer, layers.Conv2D):
            _, h, w, _ = layer.output.shape
            c_in = layer.input.shape[-1]
            total += 2 * h * w * layer.kernel_size[0] * layer.kernel_size[1] * c_in * layer.filters
    return int(total)


def folded_batch_norm_weights(model: keras.Model) -> dict[str, list[np.ndarray]]:
    """A trained model's weights by layer name for the same architecture built without batch
    norm, computing the same function at inference: each BatchNormalization's fixed affine map
    (scale = gamma / sqrt(variance + epsilon)) is folded into the convolution before it, as
    kernel * scale and bias = beta - mean * scale. The network then makes one pass over each
    feature map instead of two; under bfloat16 it also skips the casts to float32 and back that
    every batch norm costs. A model without batch norm comes back unchanged."""
    weights: dict[str, list[np.ndarray]] = {}
    norms = {layer.name: layer for layer in model.layers
             if isinstance(layer, layers.BatchNormalization)}
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization) or not layer.weights:
            continue
        values = [np.asarray(w, np.float64) for w in layer.get_weights()]
        head, conv, index = layer.name.rpartition("_conv")
        norm = norms.pop(f"{head}_bn{index}", None) if conv else None
        if norm is not None:
            mean, variance = (np.asarray(w, np.float64)
                              for w in (norm.moving_mean, norm.moving_variance))
            gamma = np.asarray(norm.gamma, np.float64) if norm.scale else 1.0
            beta = np.asarray(norm.beta, np.float64) if norm.center else 0.0
            scale = gamma / np.sqrt(variance + norm.epsilon)
            bias = values[1] if len(values) > 1 else 0.0
            values = [values[0] * scale, (bias - mean) * scale + beta]
        weights[layer.name] = [v.astype(np.float32) for v in values]
    if norms:
        raise ConfigError(f"{model.name}: batch norm {', '.join(sorted(norms))} follows no "
                          f"convolution named <block>_conv<i>; it cannot be folded")
    return weights


def layer_weights(model: keras.Model) -> dict[str, list[np.ndarray]]:
    """A model's weights by layer name (the form `set_layer_weights` takes)."""
    return {layer.name: layer.get_weights() for layer in model.layers if layer.weights}


def set_layer_weights(model: keras.Model, weights: dict[str, list]) -> None:
    """Set weights by layer name (a model built with other layers or names gets a clear error)."""
    for name, values in weights.items():
        model.get_layer(name).set_weights(values)


#: Plain dtype policies that store weights in half precision (never used to train).
HALF_STORAGE = ("float16", "bfloat16")


def trained_policy(model: keras.Model) -> str:
    """The dtype policy a model was trained with, e.g. "mixed_bfloat16". Keras saves it per
    layer: a loaded model itself reports the global policy of the moment it was loaded. Training
    only uses float32 and mixed policies; a plain half-precision one is a storage format
    (`experiments.ensemble` halves its file so), which decodes exactly to float32."""
    policy = next((layer.dtype_policy.name for layer in model.layers if layer.weights),
                  model.dtype_policy.name)
    return "float32" if policy in HALF_STORAGE else policy
