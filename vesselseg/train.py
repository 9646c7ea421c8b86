"""`vesselseg train`: train a U-Net on preprocessed folders, one new run folder per run.

The run folder (`runs.RunFolder`, under artifacts/runs/<timestamp>_<name>/) receives config.json
(reloadable), best.keras, history.csv (one row per epoch, with its learning_rate),
learning_curves.png, tensorboard/, environment.json, status.json and, as the last step,
threshold.json (`calibrate`). Re-running the same command after a crash resumes the unfinished
run from its last completed epoch (`callbacks.TrainingState`), or only finishes it when training
itself had ended; a finished run is never touched again. While a run trains, its folder is locked
(`locks.hold_folder`): a second copy of the command refuses it. Flags are made from
`TrainConfig`'s fields; --config takes a recipe name or a JSON file.

Over 350 lines: the training run's life cycle (checks, resume, divergence, finishing) and the
command.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from .cli import add_config_arguments, config_overrides, run_cli
from .config import PreprocessConfig, TrainConfig, find_recipe, from_dict, load_config
from .console import is_terminal
from .errors import ConfigError, VesselsegError
from .io import write_text_atomic
from .runs import RunFolder, config_fingerprint

if TYPE_CHECKING:
    import keras


class TrainingDiverged(VesselsegError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    """What `train` returns: the finished run, its threshold, and the Keras History of the
    epochs this call trained (None when it trained none: training had ended before a kill, and
    this call only finished the run)."""

    run: RunFolder
    history: keras.callbacks.History | None
    threshold: float

    @property
    def path(self) -> Path:
        """The run folder's path."""
        return self.run.path


def build_callbacks(config: TrainConfig, run: RunFolder | Path, best_so_far: float | None,
                    start: float, state=None) -> list:
    """The callbacks of a run: rate schedule, checkpoint, early stop, the resume state and the
    history log it feeds, status and TensorBoard, in the order their epoch ends must run.
    `state`: the run's `callbacks.TrainingState`, already restored (a new one by default)."""
    import keras

    from .callbacks import (
        AtomicModelCheckpoint,
        StopOnNonFiniteWeights,
        TrainingState,
        WallClockBudget,
        cosine_learning_rate,
    )

    run = RunFolder.named(run)
    if state is None:
        state = TrainingState(run.backup_path, run.history_path)
    monitor = "val_dice"
    if config.lr_schedule == "plateau":
        rate = keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=0.5, patience=config.plateau_patience,
            min_lr=config.min_learning_rate)
    else:
        rate = keras.callbacks.LearningRateScheduler(
            lambda epoch, _lr: cosine_learning_rate(config, epoch, time.monotonic() - start))
    stopping = keras.callbacks.EarlyStopping(monitor=monitor, mode="max",
                                             patience=config.early_stopping_patience,
                                             restore_best_weights=config.keep == "best")
    state.clock = lambda: time.monotonic() - start  # training seconds, earlier sessions included
    state.watched = [stopping, rate]  # their counters continue across a resume
    callbacks = [
        keras.callbacks.TerminateOnNaN(),
        StopOnNonFiniteWeights(),
        rate,  # sets an epoch's rate before the state reads it, lowers it before it is saved
        # keep="last" saves every epoch: with a schedule that anneals to its end, the final
        # model is the one to keep, and a few validation images choose an epoch by noise
        AtomicModelCheckpoint(str(run.model_path), monitor=monitor, mode="max",
                              save_best_only=config.keep == "best",
                              initial_value_threshold=best_so_far),
        stopping,
    ]
    if config.budget_minutes:
        callbacks.append(WallClockBudget(config.budget_minutes * 60.0, start))
    callbacks += [
        state,  # commits the epoch: weights, history rows, clock, counters
        state.history_log(),  # history.csv from what was just committed
        keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: run.update_status(elapsed=state.elapsed)),
        keras.callbacks.TensorBoard(str(run.path / "tensorboard"), write_graph=False),
    ]
    return callbacks


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


#: A batch may repeat each training image at most this many times (a tiny set with a few
#: images is fine; --batch-size 1000000000 is a typo that would never form its first batch).
MAX_BATCH_REPEATS = 4
#: Most bytes one batch of training views may take (float32 images and targets).
MAX_BATCH_BYTES = 8 * 2**30


def check_batch_size(batch_size: int, images: int, side: int, folders: list[str]) -> None:
    """Refuse a batch size that could not be trained: many times the training images (the
    stream repeats them to fill each batch, for ever with a huge one), or a batch whose views
    alone exceed MAX_BATCH_BYTES; before any run folder is made."""
    batch_bytes = batch_size * side * side * 5 * 4  # RGB + vessels + FOV, float32
    if batch_size > MAX_BATCH_REPEATS * max(images, 1) or batch_bytes > MAX_BATCH_BYTES:
        raise ConfigError(f"batch_size: {batch_size} is too large for the {images} training "
                          f"images of {side}x{side} in {', '.join(folders)} (at most "
                          f"{MAX_BATCH_REPEATS} x the training images and "
                          f"{MAX_BATCH_BYTES // 2**30} GB a batch); use at most {max(images, 1)}")


def train(config: TrainConfig, devices: list[str] | None = None, progress: bool = True,
          callbacks: list | None = None) -> TrainResult:
    """Train according to `config` (or resume its unfinished run); returns a `TrainResult`
    (`.run`, `.path`, `.history`, `.threshold`). The library function behind the CLI.

    `devices`: train with a MirroredStrategy over these (e.g. logical CPUs from
    `devices.split_cpu`); default: every GPU, else the CPU. `callbacks`: Keras callbacks run
    after the run's own (they see its logs, and may stop training). With `config.init_from`,
    the network settings left at their defaults are the starting run's
    (`finetune.inherit_from_init`). Keras's global dtype policy, which training sets to the
    run's precision, is put back afterwards: the caller's own models are not affected."""
    import keras

    previous_policy = keras.mixed_precision.global_policy()
    try:
        return _train(config, devices, progress, callbacks)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _train(config: TrainConfig, devices: list[str] | None, progress: bool,
           callbacks: list | None) -> TrainResult:
    from .calibrate import choose_threshold
    from .finetune import checked_init_weights, inherit_from_init
    from .losses import make_loss
    from .model import check_architecture
    from .pipeline import labels_are_binary, split_rows
    from .preprocess import load_preprocess_config, merged_manifest

    # a fine-tuning run takes the starting run's network unless the config asks otherwise
    config = inherit_from_init(config)
    folders = config.data
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
    side = config.augment.window or settings[0].size
    if side % 2**config.depth or side // 2**config.depth < 2:
        raise ConfigError(f"depth: {config.depth} pooling steps do not fit the {side}x{side} "
                          f"training views (the side must be a multiple of 2**depth = "
                          f"{2**config.depth}, and at least twice it); lower depth")
    loss = make_loss(config.loss, config.loss_balance, config.focal_alpha, config.focal_gamma,
                     use_fov=config.use_fov_in_loss)
    config = replace(config, preprocess=settings[0])
    init_weights = checked_init_weights(config) if config.init_from else None
    manifest = merged_manifest(folders)
    train_rows, val_rows = split_rows(manifest, "train"), split_rows(manifest, "val")
    check_batch_size(config.batch_size, len(train_rows), side, folders)
    runs_dir = Path(config.runs_dir).resolve()
    for folder in folders:  # run folders among the data would be read back as its files
        if runs_dir == Path(folder).resolve() or Path(folder).resolve() in runs_dir.parents:
            raise ConfigError(f"runs_dir: {config.runs_dir} is inside the data folder {folder}; "
                              f"keep runs outside the preprocessed data")
    if config.soft_labels and labels_are_binary(train_rows):
        print(f"warning: soft_labels: the vessel masks in {', '.join(folders)} hold only 0 and "
              f"255 (preprocessed before vesselseg kept the coverage, or never resized), so "
              f"training sees binary labels; preprocess again into a new folder to keep it",
              file=sys.stderr)

    with contextlib.ExitStack() as held:
        run = _claim_run(config, held)
        try:
            if run.status().get("step") == "trained":
                # training had ended (fit returned) when the run stopped: only finishing is left
                history, status = None, run.status()
                seconds, epochs = status.get("seconds", 0.0), status.get("epochs", 0)
            else:
                history, seconds, epochs = _fit(config, run, loss, init_weights, train_rows,
                                                val_rows, devices, progress, callbacks)
            threshold = choose_threshold(run, val_rows)
            run.update_status(state="finished", seconds=seconds, epochs=epochs,
                              finished=datetime.now(timezone.utc).isoformat(),
                              threshold=threshold)
        except TrainingDiverged:
            raise
        except Exception as exc:  # the run is not finished: say so, with the reason
            with contextlib.suppress(OSError, VesselsegError):
                run.update_status(state="failed", reason=f"{type(exc).__name__}: {exc}"[:1000])
            raise
    return TrainResult(run=run, history=history, threshold=threshold)


def _claim_run(config: TrainConfig, held: contextlib.ExitStack) -> RunFolder:
    """The run to train into, its lock held (until `held` closes): the unfinished run of the
    same config, resumed, else a new one. A run another process is training is refused
    (FolderBusyError) rather than shared."""
    from .locks import hold_folder

    run = RunFolder.find_unfinished(config)
    if run is not None:
        probe = contextlib.ExitStack()
        probe.enter_context(hold_folder(run.path, command="train"))
        if run.state in ("running", "failed"):
            held.push(probe.pop_all())
            print(f"resuming unfinished run {run}")
            run.update_status(state="running", drop=("reason",))
            return run
        probe.close()  # it finished while we looked: a finished run is never touched again
    run = RunFolder.create(config)
    held.enter_context(hold_folder(run.path, command="train"))
    try:
        run.save_config(config)
        run.update_status(state="running", fingerprint=config_fingerprint(config),
                          started=datetime.now(timezone.utc).isoformat())
    except OSError:  # e.g. disk full: leave no half-made run folder behind
        shutil.rmtree(run.path, ignore_errors=True)
        raise
    return run


def _fit(config: TrainConfig, run: RunFolder, loss, init_weights: dict | None,
         train_rows, val_rows, devices: list[str] | None, progress: bool,
         callbacks: list | None):
    """Train (or continue training) the run's model; returns (History or None when no epoch was
    left to train, training seconds, epochs). Raises TrainingDiverged; on success the run's
    status records the "trained" step, so a rerun goes straight to the finishing steps."""
    import keras

    from .callbacks import (
        StopOnNonFiniteWeights,
        TrainingState,
        remove_partial_files,
        save_atomically,
        weights_are_finite,
    )
    from .devices import environment_facts, gpus, make_strategy, set_precision
    from .metrics import training_metrics
    from .model import get_model, set_layer_weights
    from .pipeline import make_dataset, steps_per_epoch
    from .plots import learning_curves

    keras.utils.set_random_seed(config.seed)
    policy = set_precision(config.precision)
    strategy = make_strategy(devices)
    write_text_atomic(run.path / RunFolder.ENVIRONMENT,
                      json.dumps(environment_facts(policy, strategy), indent=2) + "\n")
    remove_partial_files(run.path)  # temporary files of a killed run's last writes
    global_batch = config.batch_size
    autotune = bool(gpus())  # on a CPU-only machine the autotuner's threads slow the model
    train_data = make_dataset(train_rows, global_batch, training=True, seed=config.seed,
                              augment_config=config.augment, cache=config.cache,
                              autotune=autotune, gray=config.preprocess.gray,
                              soft_labels=config.soft_labels)
    val_data = make_dataset(val_rows, global_batch, training=False, cache=config.cache,
                            autotune=autotune, gray=config.preprocess.gray)
    state = TrainingState(run.backup_path, run.history_path)
    with strategy.scope():
        model = get_model(config.architecture, base_filters=config.base_filters, depth=config.depth,
                          batch_norm=config.batch_norm, dropout=config.dropout)
        # a resumed run then restores its later weights (backup/)
        set_layer_weights(model, init_weights or {})
        model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=loss,
                      metrics=training_metrics())
        # the newest readable state; history.csv is rewritten to match it
        initial_epoch = state.restore(model, legacy_elapsed=run.status().get("elapsed", 0.0))
    start = time.monotonic() - state.elapsed  # a resumed run's budget and time include earlier
    own = build_callbacks(config, run, run.best_validation_dice(), start, state)
    history = None
    if initial_epoch < config.epochs and not state.stopped:
        history = model.fit(train_data, validation_data=val_data, epochs=config.epochs,
                            initial_epoch=initial_epoch,
                            steps_per_epoch=steps_per_epoch(train_rows, global_batch,
                                                            config.steps_per_epoch),
                            callbacks=own + list(callbacks or []), shuffle=False,
                            verbose=1 if progress and is_terminal(sys.stdout) else 2)
    seconds = time.monotonic() - start
    losses = [row.get("loss", math.nan) for row in state.rows]
    weights_watch = next(c for c in own if isinstance(c, StopOnNonFiniteWeights))
    loss_diverged = not all(math.isfinite(v) for v in losses)
    weights_diverged = weights_watch.epoch is not None or (
        history is None and not weights_are_finite(model))  # the last session stopped so
    epochs = len(state.rows)
    if state.rows:
        import pandas as pd

        learning_curves(pd.DataFrame(state.rows), run.path / "learning_curves.png")
    if loss_diverged or weights_diverged:
        run.update_status(state="diverged", seconds=seconds)
        shutil.rmtree(run.backup_path, ignore_errors=True)  # a diverged run is never resumed
        best = run.model_path
        if best.exists() and _saved_model_is_finite(best):
            kept = f"The best model so far is kept in {best}."
        elif best.exists():
            kept = f"{best} holds non-finite weights too: do not use it."
        else:
            kept = f"No epoch finished with a valid loss, so no model was saved in {run.path}."
        what, at = (("the loss", next(i + 1 for i, v in enumerate(losses)
                                      if not math.isfinite(v)))
                    if loss_diverged else ("the weights", weights_watch.epoch or epochs))
        raise TrainingDiverged(
            f"training stopped: {what} became NaN/inf at epoch {at}. {kept} Lower "
            f"--learning-rate or use --precision float32.")
    if not run.model_path.exists():
        save_atomically(run.model_path, model.save)
    run.update_status(step="trained", seconds=seconds, epochs=epochs)
    shutil.rmtree(run.backup_path, ignore_errors=True)  # no longer needed: training is over
    return history, seconds, epochs


def _saved_model_is_finite(path: Path) -> bool:
    from .backends import load_keras_model
    from .callbacks import weights_are_finite

    return weights_are_finite(load_keras_model(path))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vesselseg train",
        description="Train a vessel segmentation U-Net on preprocessed folders. Each run writes "
                    "into its own new folder under --runs-dir; repeating an interrupted command "
                    "resumes it. Settings come from --config, then the flags; the run's "
                    "threshold is chosen on its validation images at the end (vesselseg "
                    "calibrate).")
    parser.add_argument("--config", metavar="RECIPE",
                        help="a recipe name (pretrained, finetune, drive, chase: the package's "
                             "recipes) or a JSON file of TrainConfig keys; flags override it")
    add_config_arguments(parser, TrainConfig)
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="one line per epoch, no progress bars")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of the command line: the recipe, then the flags; a fine-tuning run
    (--init-from) inherits the network settings neither of them sets explicitly."""
    from .finetune import inherit_from_init

    explicit: dict[str, str] = {}
    config = TrainConfig()
    if args.config:
        path = find_recipe(args.config)
        config = load_config(TrainConfig, path)
        raw = json.loads(path.read_text(encoding="utf-8-sig"))  # valid: load_config read it
        explicit.update({key: f"set by the recipe {path}" for key in raw})
        if isinstance(raw.get("preprocess"), dict):
            explicit.update({f"preprocess.{key}": f"set by the recipe {path}"
                             for key in raw["preprocess"]})
    flags = config_overrides(args, TrainConfig)
    explicit.update({key: f"set by --{key.replace('_', '-')}" for key in flags})
    try:
        config = from_dict(TrainConfig, {**asdict(config), **flags})
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
    return inherit_from_init(config, explicit)


def _main(args: argparse.Namespace) -> int:
    result = train(config_from_args(args), progress=not args.quiet)
    status = result.run.status()
    print(f"run folder: {result.run}\nepochs: {status['epochs']}, "
          f"{status['seconds'] / 60:.1f} min, threshold (validation best F1): "
          f"{result.threshold:.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
