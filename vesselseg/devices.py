"""Device facts, the distribution strategy and the precision policy for a run.

Training: GPU mixed_float16; CPU float32 by default, mixed bfloat16 when asked (on any CPU; only
faster with AMX or AVX512-BF16 units). Inference has its own "auto"
(`inference.resolve_inference_precision`): bfloat16 on CPU-only machines with bf16 units.
Several GPUs: a MirroredStrategy; TF_CONFIG naming several workers: MultiWorkerMirroredStrategy;
the same code path runs on CPU (logical devices in tests).
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
from collections.abc import Iterator
from pathlib import Path

import keras
import tensorflow as tf

from .errors import ConfigError

#: Training's CPU default for --precision auto, "float32" or "bfloat16": float32, since
#: bfloat16's extra epochs bought no accuracy in a fixed budget (docs/devices.md).
CPU_DEFAULT_PRECISION = "float32"


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_bf16() -> bool:
    flags = cpu_flags()
    return bool({"amx_bf16", "avx512_bf16"} & flags)


def gpus() -> list:
    return tf.config.list_physical_devices("GPU")


def resolve_precision(requested: str) -> str:
    """The Keras dtype policy name for a requested precision ('auto' picks per device)."""
    if requested == "auto":
        if gpus():
            return "mixed_float16"
        return "mixed_bfloat16" if CPU_DEFAULT_PRECISION == "bfloat16" and cpu_has_bf16() \
            else "float32"
    if requested == "bfloat16":
        return "mixed_bfloat16"
    if requested == "mixed_float16" and not gpus():
        raise ConfigError("precision: mixed_float16 needs a GPU; use float32 or bfloat16 on CPU")
    return requested


def set_precision(requested: str) -> str:
    policy = resolve_precision(requested)
    keras.mixed_precision.set_global_policy(policy)
    return policy


@contextlib.contextmanager
def dtype_policy(policy: str) -> Iterator[None]:
    """Build models under a Keras dtype policy (e.g. "mixed_bfloat16"), then restore the
    previous global policy: models built meanwhile keep theirs."""
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def split_cpu(count: int) -> list:
    """Expose `count` logical CPU devices (must run before TensorFlow initialises devices)."""
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
    return tf.config.list_logical_devices("CPU")


def make_strategy(devices: list[str] | None = None) -> tf.distribute.Strategy:
    """MultiWorker when TF_CONFIG lists several workers, Mirrored over several GPUs (or the given
    devices), else the default single-device strategy."""
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    if len(tf_config.get("cluster", {}).get("worker", [])) > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if devices:
        return tf.distribute.MirroredStrategy(devices=devices)
    if len(gpus()) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def environment_facts(policy: str, strategy: tf.distribute.Strategy) -> dict:
    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_bf16": cpu_has_bf16(),
        "gpus": [d.name for d in gpus()],
        "precision_policy": policy,
        "strategy": type(strategy).__name__,
        "replicas": strategy.num_replicas_in_sync,
    }
