"""`python -m experiments.ensemble`: join two finished runs of one U-Net shape into a new run whose
model averages their vessel probabilities.

Two networks trained apart (another seed) may make partly different mistakes, which their average
can correct, at twice the compute of one (on this project's own models it did not pay:
docs/results.md). The joined model is an ordinary run folder: `test`, `eval`, `export` and
`experiments.release` take it like any other. Its weights are stored in float16 by default, which
halves the file (two base-32 U-Nets fit in 8 MB); loading decodes them to float32. The threshold is
chosen again on the validation images the two runs share.

    python -m experiments.ensemble pretrained artifacts/runs/20261129-124800_seed1
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import keras
from keras import layers

from vesselseg.cli import run_cli
from vesselseg.config import TrainConfig, save_config
from vesselseg.errors import ConfigError
from vesselseg.io import write_text_atomic
from vesselseg.model import register_architecture, unet_logits
from vesselseg.outputs import new_folder
from vesselseg.runs import RunFolder

RECORD = "ensemble.json"
STORAGE_CHOICES = ("float16", "float32")
#: Settings the members must share: the same network shape on the same preprocessed input.
SHARED = ("architecture", "base_filters", "depth", "batch_norm", "preprocess", "working_size")


#: Layer-name prefixes of an ensemble's two U-Nets.
_PAIR = ("a_", "b_")


@register_architecture("unet_pair")
def unet_pair(base_filters: int = 32, depth: int = 3, batch_norm: bool = False,
              dropout: float = 0.0, input_channels: int = 3,
              input_size: int | None = None) -> keras.Model:
    """Two U-Nets of one shape side by side, their vessel probabilities averaged: an ensemble of
    two networks trained apart (`join_runs` joins them). Twice a U-Net's cost."""
    inputs = keras.Input(shape=(input_size, input_size, input_channels), name="image")
    maps = [layers.Activation("sigmoid", dtype="float32", name=f"{prefix}probability")(
        unet_logits(inputs, base_filters, depth, batch_norm, dropout, prefix))
        for prefix in _PAIR]
    averaged = layers.Average(dtype="float32", name="vessel_probability")(maps)
    return keras.Model(inputs, averaged, name=f"unet_pair_f{base_filters}_d{depth}")


def pair_weights(first: dict[str, list], second: dict[str, list]) -> dict[str, list]:
    """Two U-Nets' weights by layer name, placed in a `unet_pair` of the same shape."""
    return {f"{prefix}{name}": values for prefix, weights in zip(_PAIR, (first, second))
            for name, values in weights.items()}


def check_members(configs: list[TrainConfig], names: list[str]) -> None:
    """Refuse members whose network shape or input differs (naming the setting and the runs)."""
    if configs[0].architecture != "unet":
        raise ConfigError(f"{names[0]}: architecture {configs[0].architecture!r}; only plain "
                          f"'unet' runs can be joined")
    for key in SHARED:
        values = [getattr(config, key) for config in configs]
        if any(value != values[0] for value in values[1:]):
            raise ConfigError(f"{key} differs between {' and '.join(names)} ({values}); join runs "
                              f"trained alike on the same preprocessed data")


def _validation_images(run: RunFolder) -> list[str]:
    if not run.threshold_path.exists():
        raise ConfigError(f"{run.threshold_path}: missing; join finished runs (they record "
                          f"their validation images there)")
    return run.threshold_record().get("validation_images", [])


def join_runs(first: str, second: str, runs_dir: str | Path = "artifacts/runs",
              name: str = "ensemble", data: list[str] | None = None,
              storage: str = "float16") -> Path:
    """Write a new run folder holding the `unet_pair` of two finished runs ("pretrained": the
    shipped model) with its threshold chosen on their shared validation images; returns it."""
    from vesselseg.backends import load_keras_model
    from vesselseg.calibrate import choose_threshold, validation_rows
    from vesselseg.devices import dtype_policy
    from vesselseg.finetune import finished_run
    from vesselseg.model import get_model, layer_weights

    if storage not in STORAGE_CHOICES:
        raise ConfigError(f"storage: unknown {storage!r}; valid: {', '.join(STORAGE_CHOICES)}")
    members = [finished_run(member, "ensemble member") for member in (first, second)]
    folders = [folder for folder, _ in members]
    configs = [config for _, config in members]
    names = [str(folder) for folder in folders]
    check_members(configs, names)
    images = [_validation_images(folder) for folder in folders]
    if images[0] != images[1]:
        raise ConfigError(f"{' and '.join(names)} held out different validation images "
                          f"({images[0]} / {images[1]}); the joined threshold needs images "
                          f"neither was trained on")
    config = replace(configs[0], architecture="unet_pair", run_name=name, init_from="",
                     runs_dir=str(runs_dir),
                     data=[str(folder) for folder in data] if data else configs[0].data)
    val_rows = validation_rows(config.data, images[0], names[0])
    with dtype_policy(storage):
        pair = get_model("unet_pair", base_filters=config.base_filters, depth=config.depth,
                         batch_norm=config.batch_norm, dropout=config.dropout)
    weights = pair_weights(*(layer_weights(load_keras_model(folder.model_path))
                             for folder in folders))
    for layer_name, values in weights.items():
        layer = pair.get_layer(layer_name)
        layer.set_weights([value.astype(layer.variable_dtype) for value in values])

    run = RunFolder(new_folder(runs_dir, name))
    try:
        pair.save(run.model_path)
        save_config(config, run.config_path)
        record = {"members": [{"run": str(folder.path.resolve()), "run_name": member.run_name,
                               "seed": member.seed} for folder, member in zip(folders, configs)],
                  "storage": storage, "joined": datetime.now(timezone.utc).isoformat()}
        write_text_atomic(run.path / RECORD, json.dumps(record, indent=2) + "\n")
        threshold = choose_threshold(run, val_rows)
        run.update_status(state="finished", threshold=threshold, ensemble_of=names)
    except BaseException:
        shutil.rmtree(run.path, ignore_errors=True)  # no half-joined run is left behind
        raise
    return run.path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.ensemble", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs=2, metavar="RUN",
                        help="finished run folders of one U-Net shape ('pretrained': the shipped "
                             "model)")
    parser.add_argument("--runs-dir", default="artifacts/runs",
                        help="parent of the new run folder (default artifacts/runs)")
    parser.add_argument("--name", default="ensemble",
                        help="run name: the folder is <timestamp>_<name> (default ensemble)")
    parser.add_argument("--data", action="append",
                        help="preprocessed folder(s) holding the members' validation images "
                             "(repeatable; default: the first member's training data)")
    parser.add_argument("--storage", choices=STORAGE_CHOICES, default="float16",
                        help="weight storage: float16 halves the file (default float16)")
    return parser


def _main(args: argparse.Namespace) -> int:
    run = join_runs(*args.runs, runs_dir=args.runs_dir, name=args.name, data=args.data,
                    storage=args.storage)
    status = RunFolder(run).status()
    print(f"ensemble: {run} (threshold {status['threshold']:.3f}, chosen on the members' "
          f"validation images)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
