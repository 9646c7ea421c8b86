"""Starting a run from another run's weights (`init_from`): which runs fit, and their weights.

Fine-tuning needs the same network (or a W-Net grown from a U-Net of the same width) and the same
model inputs as the starting run. The run *inherits* them (`inherit_from_init`): the network
settings (ARCHITECTURE_KEYS) and model-input preprocessing (INPUT_KEYS) the user did not ask for
explicitly are the starting run's. What was asked for explicitly (a flag, a recipe key, or from
Python a TrainConfig field changed from its default) must match, and data preprocessed otherwise
than the starting run's must be preprocessed again: both are a ConfigError naming the two values
and what to do. Everything is checked before any run folder exists, so a bad starting run leaves
nothing behind.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from .config import PreprocessConfig, TrainConfig
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


def preprocess_flags(settings: PreprocessConfig, keys=INPUT_KEYS) -> str:
    """The `vesselseg preprocess` flags that make data with these settings' `keys`."""
    flags = []
    for key in keys:
        value = getattr(settings, key)
        flag = f"--{key.replace('_', '-')}"
        if isinstance(value, bool):
            flags.append(flag if value else f"--no-{key.replace('_', '-')}")
        else:
            flags.append(f"{flag} {value}")
    return " ".join(flags)


def flags_for(init: PreprocessConfig, differing: list[str] | tuple[str, ...] = ()) -> str:
    """The preprocess flags that reproduce the starting run's model inputs: its settings that
    are not the defaults, and the `differing` ones."""
    defaults = PreprocessConfig()
    return preprocess_flags(init, [key for key in INPUT_KEYS if key in differing
                                   or getattr(init, key) != getattr(defaults, key)])


def explicit_settings(config: TrainConfig) -> dict[str, str]:
    """What a TrainConfig made in Python asks for explicitly: the network and model-input
    settings changed from their defaults (key -> where it was set)."""
    defaults = TrainConfig()
    asked = {key: "set in the TrainConfig" for key in ARCHITECTURE_KEYS
             if getattr(config, key) != getattr(defaults, key)}
    asked.update({f"preprocess.{key}": "set in the TrainConfig" for key in INPUT_KEYS
                  if getattr(config.preprocess, key) != getattr(defaults.preprocess, key)})
    return asked


def inherit_from_init(config: TrainConfig,
                      explicit: Mapping[str, str] | None = None) -> TrainConfig:
    """`config` with the starting run's network settings wherever they were not asked for
    explicitly. `explicit`: key ("depth", "preprocess.size") -> where it was set ("--depth",
    "the recipe x.json"), as the command line knows it; default: `explicit_settings` (fields
    left at their defaults are inherited). An explicit value that differs from the starting
    run's is a ConfigError naming both (a W-Net may grow from a U-Net: `architecture`)."""
    if not config.init_from:
        return config
    folder, init = finished_run(config.init_from)
    explicit = explicit_settings(config) if explicit is None else explicit
    grows = "architecture" in explicit and grows_unet_into_wnet(config, init)
    inherited, conflicts = {}, []
    for key in ARCHITECTURE_KEYS:
        asked, theirs = getattr(config, key), getattr(init, key)
        if key not in explicit:
            inherited[key] = theirs
        elif asked != theirs and not (key == "architecture" and grows):
            conflicts.append((key, asked, theirs, explicit[key]))
    for key in INPUT_KEYS:
        asked, theirs = getattr(config.preprocess, key), getattr(init.preprocess, key)
        if f"preprocess.{key}" in explicit and asked != theirs:
            conflicts.append((f"preprocess.{key}", asked, theirs, explicit[f"preprocess.{key}"]))
    if conflicts:
        asked = "; ".join(f"{key} {mine!r} ({where})" for key, mine, _, where in conflicts)
        theirs = ", ".join(f"{key} {value!r}" for key, _, value, _ in conflicts)
        inputs = [key for key, *_ in conflicts if key.startswith("preprocess.")]
        hint = (f" (and data preprocessed with "
                f"{flags_for(init.preprocess, [k.split('.')[1] for k in inputs])})"
                if inputs else "")
        raise ConfigError(f"init_from: this run asks for {asked}, but {folder.path} was trained "
                          f"with {theirs}; fine-tuning keeps the starting run's network and "
                          f"inputs: leave those settings out to inherit them{hint}, or train "
                          f"from scratch without init_from")
    return replace(config, **inherited)


def check_init_compatible(config: TrainConfig, init: TrainConfig, folder: RunFolder) -> None:
    """Fine-tuning needs the same network (or a W-Net grown from that U-Net) and the same model
    inputs as the starting run (`config.preprocess`: how this run's data was made)."""
    keys = ARCHITECTURE_KEYS[1:] if grows_unet_into_wnet(config, init) else ARCHITECTURE_KEYS
    differences = [f"{key} {getattr(init, key)!r} (this run: {getattr(config, key)!r})"
                   for key in keys if getattr(init, key) != getattr(config, key)]
    if differences:
        raise ConfigError(f"init_from: {folder.path} was trained with {'; '.join(differences)}; "
                          f"fine-tuning needs the same network")
    inputs = [key for key in INPUT_KEYS
              if getattr(init.preprocess, key) != getattr(config.preprocess, key)]
    if inputs:
        theirs = ", ".join(f"{key} {getattr(init.preprocess, key)!r}" for key in inputs)
        ours = ", ".join(f"{key} {getattr(config.preprocess, key)!r}" for key in inputs)
        raise ConfigError(f"init_from: {folder.path} was trained on data preprocessed with "
                          f"{theirs}, but {', '.join(config.data)} has {ours}; preprocess your "
                          f"photos again into a new folder with vesselseg preprocess "
                          f"{flags_for(init.preprocess, inputs)} and train on that")


def checked_init_weights(config: TrainConfig) -> dict[str, list]:
    """The weights to fine-tune from, by the name of the layer that takes them, read and checked
    to fit this run. A W-Net grown from a U-Net starts from the U-Net's own maps."""
    from .backends import load_keras_model
    from .model import layer_weights, wnet_weights_from_unet

    folder, init = finished_run(config.init_from)
    check_init_compatible(config, init, folder)
    weights = layer_weights(load_keras_model(folder.model_path))
    return wnet_weights_from_unet(weights) if grows_unet_into_wnet(config, init) else weights
