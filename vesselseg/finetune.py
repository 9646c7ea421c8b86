"""Starting a run from another run's weights (`init_from`): which runs fit, and their weights.

Fine-tuning needs the same network (or a W-Net grown from a U-Net of the same width) and the same
model inputs as the starting run; everything is checked before any run folder exists, so a bad
starting run leaves nothing behind.
"""
from __future__ import annotations

from .config import TrainConfig
from .errors import ConfigError, RunFolderError
from .runs import RunFolder

#: What must match between a run and the run whose weights it starts from.
ARCHITECTURE_KEYS = ("architecture", "base_filters", "depth", "batch_norm", "dropout")
#: The preprocessing settings that change what the model sees.
INPUT_KEYS = ("size", "enhancement", "crop_to_fov", "clahe_clip", "clahe_tiles")


def finished_run(name: str, role: str = "init_from") -> tuple[RunFolder, TrainConfig]:
    """(folder, config) of the finished run named `name` ("pretrained": the shipped model);
    errors name the `role` it was given for."""
    folder = RunFolder.named(name)
    try:
        folder = RunFolder.existing(folder)
    except RunFolderError as exc:
        raise ConfigError(f"{role}: {folder.path} is not a run folder ({exc}); give a finished "
                          f"run or 'pretrained'") from None
    try:
        folder.require_finished(role)
    except RunFolderError as exc:
        raise ConfigError(str(exc)) from None
    return folder, folder.config()


def grows_unet_into_wnet(config: TrainConfig, init: TrainConfig) -> bool:
    """A W-Net may start from a U-Net run of the same width: its first U-Net takes the weights."""
    return (init.architecture, config.architecture) == ("unet", "wnet")


def check_init_compatible(config: TrainConfig, init: TrainConfig, folder: RunFolder) -> None:
    """Fine-tuning needs the same network (or a W-Net grown from that U-Net) and the same model
    inputs as the starting run."""
    keys = ARCHITECTURE_KEYS[1:] if grows_unet_into_wnet(config, init) else ARCHITECTURE_KEYS
    differences = [f"{key} {getattr(init, key)!r} (this run: {getattr(config, key)!r})"
                   for key in keys if getattr(init, key) != getattr(config, key)]
    differences += [f"preprocess.{key} {getattr(init.preprocess, key)!r} (this data: "
                    f"{getattr(config.preprocess, key)!r})"
                    for key in INPUT_KEYS
                    if getattr(init.preprocess, key) != getattr(config.preprocess, key)]
    if differences:
        raise ConfigError(f"init_from: {folder.path} was trained with {'; '.join(differences)}; "
                          f"fine-tuning needs the same network and preprocessing")


def checked_init_weights(config: TrainConfig) -> dict[str, list]:
    """The weights to fine-tune from, by the name of the layer that takes them, read and checked
    to fit this run. A W-Net grown from a U-Net starts from the U-Net's own maps."""
    from .backends import load_keras_model
    from .model import layer_weights, wnet_weights_from_unet

    folder, init = finished_run(config.init_from)
    check_init_compatible(config, init, folder)
    weights = layer_weights(load_keras_model(folder.model_path))
    return wnet_weights_from_unet(weights) if grows_unet_into_wnet(config, init) else weights
