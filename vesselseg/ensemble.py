"""`python -m vesselseg.ensemble`: join two finished runs of one U-Net shape into a new run whose
model averages their vessel probabilities.

Two networks trained apart (another seed) may make partly different mistakes, which their
average can correct, at twice the compute of one (on this project's own models it did not pay:
README "Ablations"). The joined model is an ordinary run folder: `test`, `eval`, `export` and
`--ship` take it like any other. Its weights are stored in float16 by default, which halves the
file (two base-32 U-Nets fit in 8 MB); loading decodes them to float32. The threshold is chosen
again on the validation images the two runs share.

    python -m vesselseg.ensemble pretrained artifacts/runs/20261129-124800_seed1
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from .cli import run_cli
from .config import TrainConfig, save_config
from .errors import ConfigError
from .io import write_text_atomic
from .outputs import new_folder

RECORD = "ensemble.json"
STORAGE_CHOICES = ("float16", "float32")
#: Settings the members must share: the same network shape on the same preprocessed input.
SHARED = ("architecture", "base_filters", "depth", "batch_norm", "preprocess", "working_size")


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


def _validation_images(run: Path) -> list[str]:
    from .inference import THRESHOLD_FILE

    path = run / THRESHOLD_FILE
    if not path.exists():
        raise ConfigError(f"{path}: missing; join finished runs (they record their validation "
                          f"images there)")
    return json.loads(path.read_text(encoding="utf-8")).get("validation_images", [])


def join_runs(first: str, second: str, runs_dir: str | Path = "artifacts/runs",
              name: str = "ensemble", data: list[str] | None = None,
              storage: str = "float16") -> Path:
    """Write a new run folder holding the `unet_pair` of two finished runs ("pretrained": the
    shipped model) with its threshold chosen on their shared validation images; returns it."""
    from .devices import dtype_policy
    from .inference import CONFIG_FILE, MODEL_FILE, load_keras_model
    from .model import get_model, layer_weights, pair_weights
    from .train import STATUS_FILE, choose_threshold, finished_run, validation_rows

    if storage not in STORAGE_CHOICES:
        raise ConfigError(f"storage: unknown {storage!r}; valid: {', '.join(STORAGE_CHOICES)}")
    members = [finished_run(member, "ensemble member") for member in (first, second)]
    folders = [folder for folder, _, _ in members]
    configs = [config for _, _, config in members]
    names = [str(folder) for folder in folders]
    check_members(configs, names)
    images = [_validation_images(folder) for folder in folders]
    if images[0] != images[1]:
        raise ConfigError(f"{' and '.join(names)} held out different validation images "
                          f"({images[0]} / {images[1]}); the joined threshold needs images "
                          f"neither was trained on")
    config = replace(configs[0], architecture="unet_pair", run_name=name, init_from="",
                     runs_dir=str(runs_dir),
                     data=",".join(map(str, data)) if data else configs[0].data)
    val_rows = validation_rows(config, images[0], names[0])
    with dtype_policy(storage):
        pair = get_model("unet_pair", base_filters=config.base_filters, depth=config.depth,
                         batch_norm=config.batch_norm, dropout=config.dropout)
    weights = pair_weights(*(layer_weights(load_keras_model(path)) for _, path, _ in members))
    for layer_name, values in weights.items():
        layer = pair.get_layer(layer_name)
        layer.set_weights([value.astype(layer.variable_dtype) for value in values])

    run = new_folder(runs_dir, name)
    try:
        pair.save(run / MODEL_FILE)
        save_config(config, run / CONFIG_FILE)
        record = {"members": [{"run": str(folder.resolve()), "run_name": member.run_name,
                               "seed": member.seed} for folder, member in zip(folders, configs)],
                  "storage": storage, "joined": datetime.now(timezone.utc).isoformat()}
        write_text_atomic(run / RECORD, json.dumps(record, indent=2) + "\n")
        threshold = choose_threshold(run, val_rows)
        write_text_atomic(run / STATUS_FILE, json.dumps(
            {"state": "finished", "threshold": threshold, "ensemble_of": names}, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(run, ignore_errors=True)  # no half-joined run is left behind
        raise
    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vesselseg.ensemble", description=__doc__,
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
    from .train import STATUS_FILE

    status = json.loads((run / STATUS_FILE).read_text(encoding="utf-8"))
    print(f"ensemble: {run} (threshold {status['threshold']:.3f}, chosen on the members' "
          f"validation images)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
