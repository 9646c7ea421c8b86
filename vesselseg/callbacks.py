"""Training pieces that Keras does not have: a cosine rate that follows the wall clock, a stop
before the next epoch would overrun a time budget, and a resume state that a kill at any moment
cannot damage (`TrainingState`, with the history log it feeds and an atomic checkpoint).

Keras's BackupAndRestore rewrites one weights file in place, so a kill in the middle of that
write left a file that every rerun failed to open, and its CSVLogger appended rows on its own
schedule, so a kill between the two left a gap (or, after a resume, a repeated epoch) in
history.csv. Here one epoch's state is one *generation* in the backup folder: its weights
(epoch-NNNN.weights.h5), then its record (epoch-NNNN.json: the epoch count, every history row so
far, the training seconds, the stopping and rate counters). Both are written to temporary names,
fsynced and renamed into place; the record is written last, so it commits the generation. The
two newest generations are kept: a generation that cannot be read is skipped for the one
before, with a warning. history.csv is rewritten from the committed record after each epoch and
on resume, so it always lists epochs 0..N-1 of the state training continues from, once each.

Over 350 lines: the resume state's write, commit, fallback and history reconciliation belong
together; split only with a second state format.
"""
from __future__ import annotations

import errno
import json
import math
import os
import re
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import keras

from .config import TrainConfig
from .io import write_text_atomic


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


class WallClockBudget(keras.callbacks.Callback):
    """Stop before the next epoch would overrun a wall-clock budget (`start`: time.monotonic()
    when training began, earlier epochs of a resumed run included)."""

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


class StopOnNonFiniteWeights(keras.callbacks.Callback):
    """Stop training once any weight (batch-norm statistics included) is NaN or infinite: a
    Dice loss can stay finite while the network has diverged, which Keras's TerminateOnNaN does
    not see. `epoch` records the first such epoch (1-based), None while all is well."""

    def __init__(self):
        super().__init__()
        self.epoch: int | None = None

    def on_epoch_end(self, epoch, logs=None):
        if self.epoch is None and not weights_are_finite(self.model):
            self.epoch = epoch + 1
            self.model.stop_training = True


def weights_are_finite(model) -> bool:
    import numpy as np

    return all(np.isfinite(np.asarray(weight, dtype=np.float32)).all()
               for weight in model.weights)


# -- writing files that Keras writes in place ------------------------------------------------
#: Marks the temporary files of `save_atomically` (.<name>.<token>.part<suffix>).
PART = ".part"


def _keras_suffix(name: str) -> str:
    """The suffix Keras insists on for the file it writes (".weights.h5", ".keras"...)."""
    return ".weights.h5" if name.endswith(".weights.h5") else Path(name).suffix


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (where the platform allows opening a folder)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def write_error(exc: OSError, path: Path) -> OSError:
    """An OSError naming `path` with a plain reason: h5py reports a full disk as "Unable to
    synchronously write data (... errno = 28 ...)" without an errno of its own."""
    code = exc.errno
    if code is None:
        found = re.search(r"errno = (\d+)", str(exc))
        code = int(found.group(1)) if found else None
    reason = os.strerror(code) if code else (str(exc).strip().splitlines() or ["I/O error"])[0]
    return OSError(code or errno.EIO, reason, str(path))


def save_atomically(path: str | Path, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` to a temporary file beside `path` (with the suffix Keras requires), fsync it,
    rename it onto `path` and fsync the folder: readers and a rerun after a kill at any moment
    find the old file or the new one, never part of one. An OSError (a full disk...) leaves no
    temporary file and is raised naming `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{PART}{_keras_suffix(path.name)}")
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise write_error(exc, path) from None
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_folder(path.parent)
    return path


def remove_partial_files(folder: str | Path) -> None:
    """Delete the temporary files a kill left in `folder` (from `save_atomically`)."""
    folder = Path(folder)
    if folder.is_dir():
        for stray in folder.glob(f".*{PART}*"):
            if stray.is_file():
                stray.unlink(missing_ok=True)


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """Keras's ModelCheckpoint (the same choice of epochs), writing the model atomically: a
    kill while best.keras is written leaves the previous best.keras, not a damaged one."""

    def _save_model(self, epoch, batch, logs):
        filepath = self._get_file_path(epoch, batch, logs)
        if self._should_save_model(epoch, batch, logs, filepath):
            if self.save_weights_only:
                save_atomically(filepath, lambda tmp: self.model.save_weights(tmp))
            else:
                save_atomically(filepath, lambda tmp: self.model.save(tmp))


# -- the resume state ------------------------------------------------------------------------
#: Counters of Keras callbacks that a resumed run continues instead of starting again.
RESUMED_COUNTERS = ("wait", "best", "best_epoch", "cooldown_counter")


def _number(value):
    """A log value as a plain Python number (JSON and CSV ready)."""
    import numpy as np

    try:
        array = np.asarray(value)
    except Exception:  # noqa: BLE001 - an odd log entry is kept as it is
        return value
    if array.ndim == 0 and array.dtype.kind in "biuf":
        return array.item()
    return value


def write_history(rows: Sequence[dict], path: str | Path) -> None:
    """history.csv (epoch first, then the other columns sorted, like Keras's CSVLogger), written
    atomically; no rows: no file."""
    import csv
    import io

    path = Path(path)
    if not rows:
        path.unlink(missing_ok=True)
        return
    columns = ["epoch", *sorted({key for row in rows for key in row} - {"epoch"})]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, text.getvalue())


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


class TrainingState(keras.callbacks.Callback):
    """A run's resume state (see the module's docstring): `restore` before `fit`, then this
    callback commits one generation per epoch. Place it after the callbacks whose counters it
    keeps (`watched`: early stopping, the plateau schedule) and after the ones that change the
    learning rate at an epoch's start, and `history_log()` right after it.

    `epoch`: epochs completed (where training continues); `rows`: their history rows;
    `elapsed`: training seconds at the end of the last one; `stopped`: whether a callback before
    this one (early stopping, the budget, a divergence watch) stopped training then; `clock`:
    seconds of training so far, called at each epoch's end."""

    #: Generations kept: the newest, and the one before in case the newest cannot be read.
    KEEP = 2
    FORMAT = 1

    def __init__(self, folder: str | Path, history_path: str | Path,
                 clock: Callable[[], float] | None = None, watched: Sequence = ()):
        super().__init__()
        self.folder, self.history_path = Path(folder), Path(history_path)
        self.clock = clock
        self.watched = list(watched)
        self.epoch, self.rows, self.elapsed = 0, [], 0.0
        self.counters: dict[str, dict] = {}
        self.stopped = False  # a callback had stopped training at the last committed epoch
        self._rate: float | None = None

    # -- files -------------------------------------------------------------------------------
    def record_path(self, epoch: int) -> Path:
        return self.folder / f"epoch-{epoch:04d}.json"

    def weights_path(self, epoch: int) -> Path:
        return self.folder / f"epoch-{epoch:04d}.weights.h5"

    def committed(self) -> list[int]:
        """Epoch counts of the committed generations (those with a record), newest first."""
        if not self.folder.is_dir():
            return []
        epochs = []
        for path in self.folder.glob("epoch-*.json"):
            digits = path.stem.removeprefix("epoch-")
            if digits.isdigit():
                epochs.append(int(digits))
        return sorted(epochs, reverse=True)

    # -- resuming ----------------------------------------------------------------------------
    def restore(self, model, legacy_elapsed: float = 0.0) -> int:
        """Load the newest readable generation into `model` (weights and optimizer state; build
        and compile it first, under its distribution strategy) and rewrite history.csv to match
        it; returns the epoch to continue from. A generation that cannot be read is skipped for
        the previous one; when none can, training restarts at epoch 0 from the model's current
        weights, with a warning. Runs from before generations resume from Keras's
        BackupAndRestore files (`legacy_elapsed`: their training seconds)."""
        import numpy as np

        remove_partial_files(self.folder)
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        variables = list(model.weights) + list(getattr(model.optimizer, "variables", []))
        start = [np.array(variable) for variable in variables]
        candidates = [(f"the state after epoch {epoch}",
                       lambda m, e=epoch: self._load_generation(m, e))
                      for epoch in self.committed()]
        legacy = self.folder / "latest.weights.h5"
        if legacy.exists() and (self.folder / "training_metadata.json").exists():
            candidates.append(("Keras's backup", lambda m: self._load_legacy(m, legacy_elapsed)))
        self._reset()
        for index, (what, load) in enumerate(candidates):
            try:
                load(model)
                break
            except Exception as exc:  # noqa: BLE001 - any unreadable state: try the one before
                for variable, value in zip(variables, start):
                    variable.assign(value)
                self._reset()
                then = (f"resuming from {candidates[index + 1][0]} instead"
                        if index + 1 < len(candidates) else
                        "no other state is left, so training restarts at epoch 1 from the run's "
                        "starting weights")
                warn(f"{self.folder}: cannot resume from {what} ({_first_line(exc)}); {then}")
        write_history(self.rows, self.history_path)
        return self.epoch

    def _reset(self) -> None:
        self.epoch, self.rows, self.elapsed, self.counters, self.stopped = 0, [], 0.0, {}, False

    def _load_generation(self, model, epoch: int) -> None:
        path = self.record_path(epoch)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path.name}: {type(exc).__name__}: {_first_line(exc)}") from None
        if (not isinstance(record, dict) or record.get("epoch") != epoch
                or not isinstance(record.get("history"), list)):
            raise ValueError(f"{path.name}: not the training state record of epoch {epoch}")
        path = self.weights_path(epoch)
        try:
            model.load_weights(path)
        except Exception as exc:  # noqa: BLE001 - h5py and Keras raise many kinds
            raise ValueError(f"{path.name}: {type(exc).__name__}: {_first_line(exc)}") from None
        self.epoch, self.elapsed = epoch, float(record.get("elapsed", 0.0))
        self.rows = [row for row in record["history"] if row.get("epoch", epoch) < epoch]
        self.counters = record.get("callbacks", {})
        self.stopped = bool(record.get("stopped", False))

    def _load_legacy(self, model, elapsed: float) -> None:
        """Keras BackupAndRestore's files, left by a run started before generations."""
        import pandas as pd

        metadata = json.loads((self.folder / "training_metadata.json").read_text("utf-8"))
        epoch = int(metadata["epoch"])
        model.load_weights(self.folder / "latest.weights.h5")
        rows = []
        if self.history_path.exists() and self.history_path.stat().st_size:
            logged = pd.read_csv(self.history_path)
            logged = logged[logged["epoch"] < epoch].drop_duplicates("epoch", keep="last")
            rows = [{key: _number(value) for key, value in row.items() if value == value}
                    for row in logged.to_dict("records")]
        self.epoch, self.rows, self.elapsed = epoch, rows, elapsed

    # -- each epoch --------------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        # Keras's callbacks reset their counters here; a resumed run continues them
        for callback in self.watched:
            for name, value in self.counters.get(type(callback).__name__, {}).items():
                setattr(callback, name, value)

    def on_epoch_begin(self, epoch, logs=None):
        # the rate this epoch trains with (a schedule placed before this sets it now; the
        # plateau schedule lowers it at an epoch's end, for the next one)
        self._rate = _learning_rate(self.model)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if self._rate is not None:
            logs["learning_rate"] = self._rate
        row = {"epoch": epoch, **{key: _number(value) for key, value in logs.items()}}
        self.rows = [r for r in self.rows if r["epoch"] < epoch] + [row]
        self.epoch = epoch + 1
        if self.clock is not None:
            self.elapsed = float(self.clock())
        self.counters = {type(c).__name__: {name: _number(getattr(c, name))
                                            for name in RESUMED_COUNTERS if hasattr(c, name)}
                         for c in self.watched}
        self.stopped = bool(self.model.stop_training)
        self.commit()

    def commit(self) -> None:
        """Write this epoch's generation: weights, then the record that commits them."""
        epoch = self.epoch
        save_atomically(self.weights_path(epoch), lambda tmp: self.model.save_weights(tmp))
        record = {"format": self.FORMAT, "epoch": epoch, "weights": self.weights_path(epoch).name,
                  "elapsed": self.elapsed, "stopped": self.stopped, "history": self.rows,
                  "callbacks": self.counters}
        try:
            write_text_atomic(self.record_path(epoch), json.dumps(record, indent=1) + "\n")
        except OSError as exc:
            raise write_error(exc, self.record_path(epoch)) from None
        self._prune()

    def _prune(self) -> None:
        """Keep the KEEP newest generations; drop older ones, uncommitted weights and the files
        of Keras's BackupAndRestore."""
        keep = set(self.committed()[: self.KEEP])
        for path in self.folder.glob("epoch-*"):
            digits = path.name.removeprefix("epoch-").split(".")[0]
            if digits.isdigit() and int(digits) not in keep:
                path.unlink(missing_ok=True)
        for name in ("latest.weights.h5", "training_metadata.json", "latest.weights.h5.bkp",
                     "training_metadata.json.bkp"):
            (self.folder / name).unlink(missing_ok=True)

    def history_log(self) -> keras.callbacks.Callback:
        """The callback that rewrites history.csv from the committed state after each epoch."""
        return HistoryLog(self)


class HistoryLog(keras.callbacks.Callback):
    """history.csv from a `TrainingState`'s committed rows, after each epoch (in its place in
    the callbacks, where CSVLogger used to be)."""

    def __init__(self, state: TrainingState):
        super().__init__()
        self.state = state

    def on_epoch_end(self, epoch, logs=None):
        write_history(self.state.rows, self.state.history_path)


def _learning_rate(model) -> float | None:
    import numpy as np

    rate = getattr(getattr(model, "optimizer", None), "learning_rate", None)
    if rate is None:
        return None
    try:
        return float(np.asarray(rate))
    except (TypeError, ValueError):
        return None


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= limit else text[:limit] + "..."
