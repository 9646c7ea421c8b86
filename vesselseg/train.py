"""`python -m vesselseg.train`: train a U-Net on a preprocessed folder, one run folder per run.

Run folder (artifacts/runs/<timestamp>_<name>/): config.json (reloadable), best.keras,
history.csv, learning_curves.png, tensorboard/, threshold.json (chosen on validation images at
native resolution), environment.json, status.json. Re-running the same command after a crash
resumes the unfinished run from its last completed epoch; a finished run is never touched again.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

from .cli import run_cli, simulate_crash
from .config import (
    KEEP_CHOICES,
    LR_SCHEDULES,
    PRECISIONS,
    PreprocessConfig,
    TrainConfig,
    from_dict,
    load_config,
    save_config,
    to_dict,
)
from .errors import ConfigError, VesselsegError
from .inference import add_scales_argument, setting_key
from .io import write_text_atomic
from .outputs import new_folder

STATUS_FILE = "status.json"


class TrainingDiverged(VesselsegError):
    """The loss became NaN or infinite."""


def data_folders(config: TrainConfig) -> list[str]:
    """The preprocessed folders of a run: `data` may list several, separated by commas."""
    return [part.strip() for part in config.data.split(",") if part.strip()]


def merged_manifest(folders: list[str]):
    """One manifest of the run's preprocessed folders (their splits merged)."""
    import pandas as pd

    from .preprocess import load_manifest

    return pd.concat([load_manifest(folder) for folder in folders], ignore_index=True)


# settings added after the first runs, with the value that leaves a run as it was
LATER_SETTINGS = {"init_from": "", "working_size": 0, "augment.zoom": 1.0, "augment.pan": False,
                  "soft_labels": False, "augment.window": 0}


def config_fingerprint(config: TrainConfig) -> str:
    data = to_dict(config)
    data.pop("runs_dir", None)
    # runs from before these settings existed keep their fingerprint while they are unused
    for key, unused in LATER_SETTINGS.items():
        section, _, name = key.rpartition(".")
        holder = data.get(section, {}) if section else data
        if name in holder and holder[name] == unused:
            holder.pop(name)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def find_unfinished_run(config: TrainConfig) -> Path | None:
    """An earlier run of the same config that did not finish (to resume it)."""
    runs = Path(config.runs_dir)
    if not runs.is_dir():
        return None
    fingerprint = config_fingerprint(config)
    for folder in sorted(runs.iterdir(), reverse=True):
        status_path = folder / STATUS_FILE
        if not status_path.exists():
            continue
        status = json.loads(status_path.read_text(encoding="utf-8"))
        if status.get("fingerprint") == fingerprint and status.get("state") == "running":
            return folder
    return None


def new_run_folder(config: TrainConfig) -> Path:
    """A fresh, never-used folder: timestamp + run name (+ a counter on collision)."""
    return new_folder(config.runs_dir, config.run_name)


def _read_status(run: Path) -> dict:
    path = run / STATUS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _write_status(run: Path, **fields) -> None:
    path = run / STATUS_FILE
    status = _read_status(run)
    status.update(fields)
    write_text_atomic(path, json.dumps(status, indent=2) + "\n")


def build_callbacks(config: TrainConfig, run: Path, best_so_far: float | None, start: float):
    """The plain callbacks list of a run."""
    import keras

    monitor = "val_dice"
    callbacks = [
        keras.callbacks.BackupAndRestore(str(run / "backup")),
        keras.callbacks.TerminateOnNaN(),
        # keep="last" saves every epoch: with a schedule that anneals to its end, the final
        # model is the one to keep, and a few validation images choose an epoch by noise
        keras.callbacks.ModelCheckpoint(str(run / "best.keras"), monitor=monitor, mode="max",
                                        save_best_only=config.keep == "best",
                                        initial_value_threshold=best_so_far),
        keras.callbacks.EarlyStopping(monitor=monitor, mode="max",
                                      patience=config.early_stopping_patience,
                                      restore_best_weights=config.keep == "best"),
        keras.callbacks.CSVLogger(str(run / "history.csv"), append=True),
        keras.callbacks.TensorBoard(str(run / "tensorboard"), write_graph=False),
    ]
    if config.lr_schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=0.5, patience=config.plateau_patience,
            min_lr=config.min_learning_rate))
    else:
        callbacks.append(keras.callbacks.LearningRateScheduler(
            lambda epoch, _lr: cosine_learning_rate(config, epoch, time.monotonic() - start)))
    if config.budget_minutes:
        callbacks.append(WallClockBudget(config.budget_minutes * 60.0, start))
    # training seconds so far, kept per epoch so that a resumed run continues the clock
    callbacks.append(keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: _write_status(run, elapsed=time.monotonic() - start)))
    if os.environ.get("VESSELSEG_KILL_AFTER_EPOCH"):  # crash tests: SIGKILL after an epoch
        callbacks.append(keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: simulate_crash("VESSELSEG_KILL_AFTER_EPOCH",
                                                            epoch + 1)))
    return callbacks


def cosine_learning_rate(config: TrainConfig, epoch: int, elapsed_seconds: float) -> float:
    """Cosine decay from learning_rate to min_learning_rate over whichever limit comes first, the
    epochs or the wall-clock budget: on a CPU a budgeted run stops long before `epochs`, and an
    epoch-based decay would never reach its low-rate end; on a faster machine the same recipe
    runs out of epochs first, and a time-based decay would stop it still at a high rate."""
    progress = epoch / max(1, config.epochs - 1)
    if config.budget_minutes:
        progress = max(progress, elapsed_seconds / (config.budget_minutes * 60.0))
    progress = min(1.0, max(0.0, progress))
    return config.min_learning_rate + 0.5 * (config.learning_rate - config.min_learning_rate) * (
        1 + math.cos(math.pi * progress))


def _wall_clock_budget_class():
    import keras

    class _WallClockBudget(keras.callbacks.Callback):
        """Stop before the next epoch would overrun a wall-clock budget."""

        def __init__(self, seconds: float, start: float):
            super().__init__()
            self.seconds, self.start, self.epoch_start = seconds, start, start
            self.longest = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_start = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            now = time.monotonic()
            self.longest = max(self.longest, now - self.epoch_start)
            if now - self.start + self.longest > self.seconds:
                self.model.stop_training = True

    return _WallClockBudget


def WallClockBudget(seconds: float, start: float):  # noqa: N802 - behaves like a class
    return _wall_clock_budget_class()(seconds, start)


def _best_validation_dice(run: Path) -> float | None:
    import pandas as pd

    path = run / "history.csv"
    if not path.exists() or path.stat().st_size == 0:
        return None
    history = pd.read_csv(path)
    return float(history["val_dice"].max()) if "val_dice" in history and len(history) else None


def check_preprocessing(asked: PreprocessConfig, used: PreprocessConfig, folder: str) -> None:
    """A config that asks for particular preprocessing (a recipe's "preprocess" section) must
    match how the data was made; the defaults mean "whatever the data used"."""
    if asked == PreprocessConfig() or asked == used:
        return
    differences = [f"{key} {value!r} (the data has {getattr(used, key)!r})"
                   for key, value in asdict(asked).items() if getattr(used, key) != value]
    flags = " ".join(f"--{key.replace('_', '-')} {value}" for key, value in asdict(asked).items()
                     if getattr(used, key) != value and key in ("size", "enhancement"))
    raise ConfigError(f"preprocess: the config asks for {', '.join(differences)}, but {folder} "
                      f"was preprocessed otherwise; run vesselseg.preprocess again"
                      f"{' with ' + flags if flags else ' with matching settings'}")


#: What must match between a run and the run whose weights it starts from.
ARCHITECTURE_KEYS = ("architecture", "base_filters", "depth", "batch_norm", "dropout")


def finished_run(name: str, role: str = "init_from") -> tuple[Path, Path, TrainConfig]:
    """(folder, model path, config) of the finished run named `name` ("pretrained": the model
    shipped in the package); errors name the `role` it was given for."""
    from .errors import ModelLoadError
    from .inference import PRETRAINED_DIR, run_files

    folder = PRETRAINED_DIR if name == "pretrained" else Path(name)
    try:
        files = run_files(folder)
    except ModelLoadError as exc:
        raise ConfigError(f"{role}: {folder} is not a run folder ({exc}); give a finished "
                          f"run or 'pretrained'") from None
    state = _read_status(folder).get("state")
    if state != "finished":
        raise ConfigError(f"{role}: {folder / STATUS_FILE} says the run is "
                          f"{state or 'of unknown state'}, not finished; give a finished run")
    return files


def grows_unet_into_wnet(config: TrainConfig, init: TrainConfig) -> bool:
    """A W-Net may start from a U-Net run of the same width: its first U-Net takes the weights."""
    return (init.architecture, config.architecture) == ("unet", "wnet")


def check_init_compatible(config: TrainConfig, init: TrainConfig, folder: Path) -> None:
    """Fine-tuning needs the same network (or a W-Net grown from that U-Net) and the same model
    inputs as the starting run."""
    keys = ARCHITECTURE_KEYS[1:] if grows_unet_into_wnet(config, init) else ARCHITECTURE_KEYS
    differences = [f"{key} {getattr(init, key)!r} (this run: {getattr(config, key)!r})"
                   for key in keys if getattr(init, key) != getattr(config, key)]
    differences += [f"preprocess.{key} {getattr(init.preprocess, key)!r} (this data: "
                    f"{getattr(config.preprocess, key)!r})"
                    for key in ("size", "enhancement", "crop_to_fov", "clahe_clip", "clahe_tiles")
                    if getattr(init.preprocess, key) != getattr(config.preprocess, key)]
    if differences:
        raise ConfigError(f"init_from: {folder} was trained with {'; '.join(differences)}; "
                          f"fine-tuning needs the same network and preprocessing")


def checked_init_weights(config: TrainConfig) -> dict[str, list]:
    """The weights to fine-tune from, by the name of the layer that takes them, read and checked
    to fit this run (before any run folder exists, so a bad starting run leaves nothing
    behind). A W-Net grown from a U-Net starts from the U-Net's own maps."""
    from .inference import load_keras_model
    from .model import layer_weights, wnet_weights_from_unet

    folder, model_path, init = finished_run(config.init_from)
    check_init_compatible(config, init, folder)
    trained = load_keras_model(model_path)
    weights = layer_weights(trained)
    return wnet_weights_from_unet(weights) if grows_unet_into_wnet(config, init) else weights


def train(config: TrainConfig, devices: list[str] | None = None, progress: bool = True) -> Path:
    """Train according to `config`; returns the run folder. The library function behind the CLI."""
    import keras
    import pandas as pd

    from .devices import environment_facts, gpus, make_strategy, set_precision
    from .losses import make_loss
    from .metrics import training_metrics
    from .model import check_architecture, get_model, set_layer_weights
    from .pipeline import labels_are_binary, make_dataset, split_rows, steps_per_epoch
    from .plots import learning_curves
    from .preprocess import load_preprocess_config

    folders = data_folders(config)
    settings = [load_preprocess_config(folder) for folder in folders]
    if any(s != settings[0] for s in settings[1:]):
        raise ConfigError(f"data: the folders {folders} were preprocessed with different settings; "
                          f"preprocess them alike (same --size, --enhancement, cropping)")
    check_preprocessing(config.preprocess, settings[0], folders[0])
    if config.augment.window > settings[0].size:
        raise ConfigError(f"augment.window: {config.augment.window} is larger than the images in "
                          f"{folders[0]} ({settings[0].size}); preprocess them at least that "
                          f"large, or lower the window")
    check_architecture(config.architecture)
    loss = make_loss(config.loss, config.loss_balance, config.focal_alpha, config.focal_gamma,
                     use_fov=config.use_fov_in_loss)
    config = replace(config, preprocess=settings[0])
    init_weights = checked_init_weights(config) if config.init_from else None
    manifest = merged_manifest(folders)
    train_rows, val_rows = split_rows(manifest, "train"), split_rows(manifest, "val")
    if config.soft_labels and labels_are_binary(train_rows):
        print(f"warning: soft_labels: the vessel masks in {', '.join(folders)} hold only 0 and "
              f"255 (preprocessed before vesselseg kept the coverage, or never resized), so "
              f"training sees binary labels; preprocess again into a new folder to keep it",
              file=sys.stderr)

    run = find_unfinished_run(config)
    resumed = run is not None
    if run is None:
        run = new_run_folder(config)
        try:
            save_config(config, run / "config.json")
            _write_status(run, state="running", fingerprint=config_fingerprint(config),
                          started=datetime.now(timezone.utc).isoformat())
        except OSError:  # e.g. disk full: leave no half-made run folder behind
            shutil.rmtree(run, ignore_errors=True)
            raise
    else:
        print(f"resuming unfinished run {run}")

    keras.utils.set_random_seed(config.seed)
    policy = set_precision(config.precision)
    strategy = make_strategy(devices)
    write_text_atomic(run / "environment.json",
                      json.dumps(environment_facts(policy, strategy), indent=2) + "\n")
    global_batch = config.batch_size
    autotune = bool(gpus())  # on a CPU-only machine the autotuner's threads slow the model
    train_data = make_dataset(train_rows, global_batch, training=True, seed=config.seed,
                              augment_config=config.augment, cache=config.cache,
                              autotune=autotune, gray=config.preprocess.gray,
                              soft_labels=config.soft_labels)
    val_data = make_dataset(val_rows, global_batch, training=False, cache=config.cache,
                            autotune=autotune, gray=config.preprocess.gray)
    with strategy.scope():
        model = get_model(config.architecture, base_filters=config.base_filters, depth=config.depth,
                          batch_norm=config.batch_norm, dropout=config.dropout)
        # a resumed run then restores its later weights (backup/)
        set_layer_weights(model, init_weights or {})
        model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=loss,
                      metrics=training_metrics())
    previous = _read_status(run).get("elapsed", 0.0) if resumed else 0.0
    start = time.monotonic() - previous  # a resumed run's budget and time include earlier epochs
    callbacks = build_callbacks(config, run, _best_validation_dice(run) if resumed else None,
                                start)
    history = model.fit(train_data, validation_data=val_data, epochs=config.epochs,
                        steps_per_epoch=steps_per_epoch(train_rows, global_batch,
                                                        config.steps_per_epoch),
                        callbacks=callbacks, shuffle=False, verbose=1 if progress else 2)
    seconds = time.monotonic() - start
    losses = history.history.get("loss", [])
    diverged = bool(losses) and not all(math.isfinite(v) for v in losses)
    epochs = len(losses)
    if (run / "history.csv").exists():
        logged = pd.read_csv(run / "history.csv")
        epochs = max(epochs, len(logged))  # the log also holds the epochs before a resume
        learning_curves(logged, run / "learning_curves.png")
    if diverged:
        _write_status(run, state="diverged", seconds=seconds)
        best = run / "best.keras"
        kept = (f"The best model so far is kept in {best}." if best.exists() else
                f"No epoch finished with a valid loss, so no model was saved in {run}.")
        raise TrainingDiverged(
            f"training stopped: the loss became NaN/inf at epoch {epochs}. {kept} Lower "
            f"--learning-rate or use --precision float32.")
    if not (run / "best.keras").exists():
        model.save(run / "best.keras")
    threshold = choose_threshold(run, val_rows)
    _write_status(run, state="finished", seconds=seconds, epochs=epochs,
                  finished=datetime.now(timezone.utc).isoformat(), threshold=threshold)
    return run


def choose_threshold(run: Path, val_rows, replaced: dict | None = None, tta: bool = False,
                     scales: tuple[float, ...] = (1.0,)) -> float:
    """Pick the best-F1 threshold on the validation images at native resolution, every image
    weighing the same (so one camera's large photos do not choose it for all).

    With `tta` or `scales` (an averaging inference setting) the threshold is chosen for that
    setting and added under "settings" in threshold.json, beside the plain one."""
    from .evaluation import PooledEvaluator, best_f1_threshold
    from .inference import THRESHOLD_FILE, Segmenter
    from .io import read_image, read_mask

    segmenter = Segmenter.from_run(run, threshold=0.5, tta=tta, scales=scales)
    evaluator = PooledEvaluator(threshold=0.5)
    for _, row in val_rows.iterrows():
        image = read_image(row["native_image"])
        truth = read_mask(row["native_annotation"], image.shape[:2])
        fov = read_mask(row["native_fov"], image.shape[:2])
        prediction = segmenter.predict(image, fov)
        evaluator.add(row["id"], prediction.probability, truth, fov)
    threshold, f1 = evaluator.per_image_threshold()
    pooled_threshold, pooled_f1 = best_f1_threshold(evaluator.positive_hist,
                                                    evaluator.negative_hist)
    choice = {"threshold": threshold, "validation_f1": f1,
              "validation_images": list(val_rows["id"]),
              "how": "best-F1 threshold over the validation images, each image weighing the "
                     "same, native resolution, inside the FOV",
              "working_size": segmenter.working_size,
              "pooled_pixels_threshold": pooled_threshold, "pooled_pixels_f1": pooled_f1}
    setting = setting_key(tta, scales)
    if setting:
        record = json.loads((run / THRESHOLD_FILE).read_text(encoding="utf-8"))
        record.setdefault("settings", {})[setting] = {
            key: value for key, value in choice.items() if key != "validation_images"}
    else:
        # the settings' thresholds stay beside the new plain one (not also under "replaced")
        replaced = dict(replaced or {})
        kept = replaced.pop("settings", None)
        record = {**choice, **({"replaced": replaced} if replaced else {}),
                  **({"settings": kept} if kept else {})}
    write_text_atomic(run / THRESHOLD_FILE, json.dumps(record, indent=2) + "\n")
    return threshold


def validation_rows(config: TrainConfig, expected: list[str] | None, run: str | Path):
    """The validation rows of `config`'s data folders, which must be the images `run` recorded."""
    from .pipeline import split_rows

    val_rows = split_rows(merged_manifest(data_folders(config)), "val")
    if list(val_rows["id"]) != expected:
        raise ConfigError(f"{run}: the data folders ({config.data}) do not hold the validation "
                          f"images it was trained with; run from where it was trained, or pass "
                          f"--data with the same preprocessed folders")
    return val_rows


def rethreshold(run: str | Path, tta: bool = False, scales: tuple[float, ...] = (1.0,),
                data: list[str] | None = None) -> float:
    """Choose a finished run's threshold again on its validation images (after a change of the
    rule; the threshold it replaces is kept inside the new threshold.json), or choose one for
    an averaging inference setting (flip TTA, several scales) and add it there. `data`: the
    preprocessed folders holding them, when not where the run was trained (the shipped model);
    they must hold the very validation images the run recorded."""
    from .inference import CONFIG_FILE, THRESHOLD_FILE

    run = Path(run)
    if _read_status(run).get("state") != "finished":
        raise ConfigError(f"{run}: not a finished run (status.json says otherwise)")
    config = load_config(TrainConfig, run / CONFIG_FILE)
    previous = json.loads((run / THRESHOLD_FILE).read_text(encoding="utf-8"))
    if data:
        config = replace(config, data=",".join(str(folder) for folder in data))
    val_rows = validation_rows(config, previous.get("validation_images"), run)
    if setting_key(tta, scales):
        return choose_threshold(run, val_rows, tta=tta, scales=scales)
    threshold = choose_threshold(run, val_rows, replaced=previous)  # one write keeps both
    _write_status(run, threshold=threshold)
    return threshold


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vesselseg.train",
        description="Train a vessel segmentation U-Net on a preprocessed folder. Each run writes "
                    "into its own new folder under --runs-dir; repeating an interrupted command "
                    "resumes it.")
    parser.add_argument("--data", nargs="+",
                        help="preprocessed folder(s) from vesselseg.preprocess; several folders "
                             "are trained on together (their train/val splits are merged)")
    parser.add_argument("--config", help="JSON config file (keys of TrainConfig); flags override")
    parser.add_argument("--epochs", type=int, help="maximum epochs (default 100)")
    parser.add_argument("--batch-size", type=int, help="images per step (default 4)")
    parser.add_argument("--learning-rate", type=float, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--architecture",
                        help="unet (default) or wnet: two U-Nets in a row, the second "
                             "correcting the first (LWNet's W-Net; twice the cost per width)")
    parser.add_argument("--base-filters", type=int,
                        help="U-Net width: filters of the first level (default 16)")
    parser.add_argument("--depth", type=int, help="U-Net levels (default 4)")
    parser.add_argument("--loss", help="dice (default), bce, focal, focal_dice, bce_dice, "
                                       "cldice, bce_dice_cldice, bce_dice_skeleton")
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES,
                        help="plateau (default): halve the rate when validation stalls "
                             "(ReduceLROnPlateau); cosine: decay to the minimum over --epochs "
                             "or --budget-minutes, whichever ends first")
    parser.add_argument("--keep", choices=KEEP_CHOICES,
                        help="which epoch's model the run keeps as best.keras: best (default: "
                             "highest validation Dice) or last (for --lr-schedule cosine)")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="auto (default): mixed_float16 on a GPU, float32 on a CPU")
    parser.add_argument("--steps-per-epoch", type=int,
                        help="batches per epoch (default: one pass over the training images)")
    parser.add_argument("--budget-minutes", type=float,
                        help="stop after this much wall-clock time (the model --keep chooses "
                             "is kept)")
    parser.add_argument("--init-from", metavar="RUN",
                        help="fine-tune: start from a finished run's weights, or 'pretrained' "
                             "for the model shipped in the package (same network and "
                             "preprocessing required)")
    parser.add_argument("--soft-labels", action="store_true", default=None,
                        help="train on each pixel's vessel coverage instead of the binary mask "
                             "(keeps capillaries thinner than a model pixel; see README)")
    parser.add_argument("--seed", type=int, help="seed of weights, shuffling and augmentation")
    parser.add_argument("--run-name", help="suffix of the run folder's name")
    parser.add_argument("--runs-dir", help="parent folder of run folders (artifacts/runs)")
    parser.add_argument("--quiet", action="store_true", help="one line per epoch")
    parser.add_argument("--rethreshold", metavar="RUN",
                        help="only choose finished RUN's threshold again on its validation "
                             "images (the old one is kept in its threshold.json); with --tta "
                             "and/or --scales, choose one for that inference setting instead")
    parser.add_argument("--tta", action="store_true",
                        help="with --rethreshold: for flip TTA (test/eval --tta)")
    add_scales_argument(parser, prefix="with --rethreshold: for multi-scale inference: ")
    parser.add_argument("--cpu-replicas", type=int, default=0,
                        help="split the CPU into N logical devices and train with a "
                             "MirroredStrategy over them (exercises the multi-GPU code path)")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    config = load_config(TrainConfig, args.config) if args.config else TrainConfig()
    overrides = {key: value for key, value in vars(args).items()
                 if key not in ("config", "quiet", "cpu_replicas", "rethreshold", "tta",
                                "scales")
                 and value is not None}
    if "data" in overrides:
        overrides["data"] = ",".join(overrides["data"])
    try:
        return from_dict(TrainConfig, {**asdict(config), **overrides})
    except TypeError as exc:
        raise ConfigError(str(exc)) from None


def _main(args: argparse.Namespace) -> int:
    if args.rethreshold is not None:
        threshold = rethreshold(args.rethreshold, args.tta, args.scales, args.data)
        setting = setting_key(args.tta, args.scales) or "plain setting"
        print(f"{args.rethreshold}: threshold {threshold:.3f} for {setting} (validation best "
              f"F1, every image weighing the same)")
        return 0
    if args.tta or args.scales != (1.0,):
        raise ConfigError("--tta and --scales only apply with --rethreshold RUN (training "
                          "itself has no inference setting)")
    config = config_from_args(args)
    devices = None
    if args.cpu_replicas > 1:
        from .devices import split_cpu

        devices = [d.name for d in split_cpu(args.cpu_replicas)]
    run = train(config, devices=devices, progress=not args.quiet)
    status = json.loads((run / STATUS_FILE).read_text(encoding="utf-8"))
    print(f"run folder: {run}\nepochs: {status['epochs']}, {status['seconds'] / 60:.1f} min, "
          f"threshold (validation best F1): {status['threshold']:.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
