"""Run folders: the one place that knows what a training run leaves on disk and in what state.

A run folder holds config.json (the TrainConfig, reloadable), best.keras, threshold.json,
status.json (running / finished / diverged, its config fingerprint, timings), history.csv,
environment.json, backup/ (Keras's resume state), tests/ (test results) and export/ (exports).
train, calibrate, test, eval and export all go through `RunFolder` instead of building paths.
The shipped model is a run folder too, named "pretrained" wherever a run is accepted.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .config import TrainConfig, load_config, save_config, to_dict
from .errors import RunFolderError
from .io import write_text_atomic
from .outputs import new_folder

PRETRAINED_NAME = "pretrained"
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"

#: Settings added after the first runs, with the value that leaves a run as it was: unused,
#: they do not count in the fingerprint, so runs from before they existed still resume.
LATER_SETTINGS = {"init_from": "", "working_size": 0, "augment.zoom": 1.0, "augment.pan": False,
                  "soft_labels": False, "augment.window": 0}


def config_fingerprint(config: TrainConfig) -> str:
    """A short hash of everything that determines a run except where it is written: the same
    command repeated after a crash finds its unfinished run by it."""
    data = to_dict(config)
    data.pop("runs_dir", None)
    data["data"] = ",".join(data["data"])  # stored as one string before `data` was a list
    for key, unused in LATER_SETTINGS.items():
        section, _, name = key.rpartition(".")
        holder = data.get(section, {}) if section else data
        if name in holder and holder[name] == unused:
            holder.pop(name)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


#: Most bytes of a .keras archive's architecture description read (a real one is ~100 KB).
MAX_ARCHITECTURE_BYTES = 64 * 2**20


def model_settings(path: str | Path) -> dict | None:
    """The network settings (architecture, base_filters, depth, batch_norm, dropout) of a .keras
    file holding a vesselseg U-Net or W-Net, read from its architecture description (which is
    only read, never run); None for any other file."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            if archive.getinfo("config.json").file_size > MAX_ARCHITECTURE_BYTES:
                return None
            description = json.loads(archive.read("config.json"))
        layers = [layer for layer in description["config"]["layers"] if isinstance(layer, dict)]
        by_name = {layer["config"]["name"]: layer for layer in layers}
    except (OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile):
        return None
    wnet = "first_down0_conv1" in by_name
    prefix = "first_" if wnet else ""
    first = by_name.get(f"{prefix}down0_conv1")
    if first is None or not isinstance(first.get("config", {}).get("filters"), int):
        return None
    dropout = next((layer["config"].get("rate") for layer in layers
                    if layer.get("class_name") == "SpatialDropout2D"), 0.0)
    return {"architecture": "wnet" if wnet else "unet",
            "base_filters": first["config"]["filters"],
            "depth": sum(1 for name, layer in by_name.items()
                         if name.startswith(f"{prefix}pool")
                         and layer.get("class_name") == "MaxPooling2D"),
            "batch_norm": any("BatchNormalization" in str(layer.get("class_name"))
                              for layer in layers),
            "dropout": float(dropout) if isinstance(dropout, (int, float)) else dropout}


def user_cache_dir() -> Path:
    """Where vesselseg keeps files it makes for the shipped model (its exports): never inside
    the installed package. $VESSELSEG_CACHE, else $XDG_CACHE_HOME/vesselseg, else ~/.cache."""
    if os.environ.get("VESSELSEG_CACHE"):
        return Path(os.environ["VESSELSEG_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vesselseg"


class RunFolder:
    """A training run's folder: file names, status, resume and "is it finished"."""

    MODEL = "best.keras"
    CONFIG = "config.json"
    THRESHOLD = "threshold.json"
    STATUS = "status.json"
    HISTORY = "history.csv"
    ENVIRONMENT = "environment.json"
    BACKUP = "backup"
    TESTS = "tests"
    EXPORT = "export"
    EXPORT_NAMES = {"savedmodel": "savedmodel", "tflite": "model.tflite", "onnx": "model.onnx"}

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __eq__(self, other) -> bool:
        return isinstance(other, RunFolder) and self.path == other.path

    def __hash__(self) -> int:
        return hash(self.path)

    # -- finding and creating --------------------------------------------------------------
    @classmethod
    def named(cls, name: str | Path | RunFolder) -> RunFolder:
        """A run folder by path, or "pretrained" for the model shipped in the package."""
        if isinstance(name, RunFolder):
            return name
        return cls(PRETRAINED_DIR if str(name) == PRETRAINED_NAME else name)

    @classmethod
    def existing(cls, name: str | Path | RunFolder) -> RunFolder:
        """`named`, checked to hold a model and its config (a clear error otherwise)."""
        run = cls.named(name)
        if not run.path.is_dir():
            raise RunFolderError(f"{run.path}: run folder does not exist")
        for file in (run.model_path, run.config_path):
            if not file.exists():
                raise RunFolderError(f"{run.path}: not a vesselseg run folder (no {file.name})")
        return run

    @classmethod
    def create(cls, config: TrainConfig) -> RunFolder:
        """A fresh, never-used folder under config.runs_dir: timestamp + run name."""
        return cls(new_folder(config.runs_dir, config.run_name))

    @classmethod
    def find_unfinished(cls, config: TrainConfig) -> RunFolder | None:
        """The newest earlier run of the same config that did not finish, killed ("running")
        or stopped by an error ("failed", e.g. a full disk), to resume it."""
        runs = Path(config.runs_dir)
        if not runs.is_dir():
            return None
        fingerprint = config_fingerprint(config)
        for folder in sorted(runs.iterdir(), reverse=True):
            run = cls(folder)
            if not run.status_path.exists():
                continue
            status = run.status()
            if (status.get("fingerprint") == fingerprint
                    and status.get("state") in ("running", "failed")):
                return run
        return None

    # -- files -----------------------------------------------------------------------------
    @property
    def model_path(self) -> Path:
        return self.path / self.MODEL

    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def threshold_path(self) -> Path:
        return self.path / self.THRESHOLD

    @property
    def status_path(self) -> Path:
        return self.path / self.STATUS

    @property
    def history_path(self) -> Path:
        return self.path / self.HISTORY

    @property
    def backup_path(self) -> Path:
        return self.path / self.BACKUP

    @property
    def is_shipped(self) -> bool:
        """True for the model inside the installed package, which nothing may write into."""
        return self.path.resolve() == PRETRAINED_DIR

    def export_path(self, fmt: str) -> Path:
        """Where an export in `fmt` goes by default: RUN/export/, or for the shipped model a
        folder of the user cache named after its weights' hash (never the package)."""
        if fmt not in self.EXPORT_NAMES:
            raise RunFolderError(f"format: unknown {fmt!r}; valid formats: "
                                 f"{', '.join(self.EXPORT_NAMES)}")
        if self.is_shipped:
            folder = user_cache_dir() / f"pretrained-{self.model_sha256()[:12]}"
        else:
            folder = self.path / self.EXPORT
        return folder / self.EXPORT_NAMES[fmt]

    def model_sha256(self) -> str:
        digest = hashlib.sha256()
        with open(self.model_path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()

    def output_folder(self, kind: str, name: str, default_parent: str | Path) -> Path:
        """A new folder for results about this run: inside it (RUN/<kind>/...), or under
        `default_parent` for the shipped model."""
        parent = Path(default_parent) if self.is_shipped else self.path / kind
        return new_folder(parent, name)

    # -- contents --------------------------------------------------------------------------
    def config(self) -> TrainConfig:
        """The run's TrainConfig, checked to describe the network in its best.keras (a
        config.json edited after training would build another network around its weights)."""
        config = load_config(TrainConfig, self.config_path)
        self.check_config_matches_model(config)
        return config

    def check_config_matches_model(self, config: TrainConfig) -> None:
        """Raise a RunFolderError naming config.json and each key whose value differs from the
        network saved in best.keras. Files that are not a vesselseg U-Net or W-Net (other
        architectures, no model yet) are not checked here: the model loader reports them."""
        if config.architecture not in ("unet", "wnet") or not self.model_path.exists():
            return
        built = model_settings(self.model_path)
        if built is None:
            return
        differences = [f"{key} is {getattr(config, key)!r} but the model was built with "
                       f"{value!r}" for key, value in built.items()
                       if getattr(config, key) != value]
        if differences:
            raise RunFolderError(
                f"{self.config_path}: {'; '.join(differences)} ({self.model_path.name}); this "
                f"config.json does not describe the run's model (edited after training, or "
                f"copied from another run): put back the values the model was trained with")

    def save_config(self, config: TrainConfig) -> None:
        save_config(config, self.config_path)

    def status(self) -> dict:
        """status.json's record ({} when the run has none)."""
        return _json_object(self.status_path)

    def update_status(self, drop: tuple[str, ...] = (), **fields) -> None:
        """Set `fields` in status.json (atomically), removing the keys in `drop`."""
        status = self.status()
        for key in drop:
            status.pop(key, None)
        status.update(fields)
        write_text_atomic(self.status_path, json.dumps(status, indent=2) + "\n")

    @property
    def state(self) -> str | None:
        """"running", "finished", "diverged", or None when the run has no status."""
        return self.status().get("state")

    @property
    def is_finished(self) -> bool:
        return self.state == "finished"

    def require_finished(self, role: str = "run") -> RunFolder:
        """Raise a RunFolderError naming `role` unless this is a finished run."""
        existing = RunFolder.existing(self)
        if existing.state != "finished":
            raise RunFolderError(f"{role}: {self.status_path} says the run is "
                                 f"{existing.state or 'of unknown state'}, not finished; give a "
                                 f"finished run")
        return existing

    def threshold_record(self) -> dict:
        """threshold.json's record ({} when the run has none)."""
        return _json_object(self.threshold_path)

    def write_threshold_record(self, record: dict) -> None:
        write_text_atomic(self.threshold_path, json.dumps(record, indent=2) + "\n")

    def threshold(self, setting: str = "") -> tuple[float, str]:
        """(threshold, source) for an inference setting (`inference.setting_key`): the one
        chosen on validation images for that setting, else the plain setting's, else 0.5."""
        record = self.threshold_record()
        if not record and not self.threshold_path.exists():
            return 0.5, "default 0.5 (the run has no threshold.json)"
        plain = self._checked_threshold(record.get("threshold"), "threshold")
        if not setting:
            return plain, "validation"
        settings = record.get("settings", {})
        if not isinstance(settings, dict):
            raise RunFolderError(f"{self.threshold_path}: settings: expected a JSON object")
        own = settings.get(setting)
        if own is not None:
            value = own.get("threshold") if isinstance(own, dict) else None
            return self._checked_threshold(value, f"settings.{setting}.threshold"), "validation"
        return plain, "validation, plain setting"

    def _checked_threshold(self, value, key: str) -> float:
        """A threshold read from threshold.json: a number in [0, 1], else an error naming it."""
        import math

        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value) or not 0.0 <= value <= 1.0):
            raise RunFolderError(f"{self.threshold_path}: {key}: {value!r} is not a threshold "
                                 f"in [0, 1]; choose it again with vesselseg calibrate "
                                 f"{self.path}")
        return float(value)

    def best_validation_dice(self) -> float | None:
        """The best validation Dice logged so far (a resumed run's checkpoint must beat it)."""
        import pandas as pd

        path = self.history_path
        if not path.exists() or path.stat().st_size == 0:
            return None
        history = pd.read_csv(path)
        return float(history["val_dice"].max()) if "val_dice" in history and len(history) else None


def _json_object(path: Path) -> dict:
    """The JSON object in a run folder's file ({} when the file is missing): a file that is
    empty, binary, not JSON or holds another JSON type (a list, a string, null) is a
    RunFolderError naming it, never an AttributeError further on. UTF-8 with or without a
    byte-order mark, as config.json."""
    if not path.exists():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError, RecursionError) as exc:
        raise RunFolderError(f"{path}: unreadable ({exc})") from None
    if not isinstance(record, dict):
        raise RunFolderError(f"{path}: expected a JSON object, found {type(record).__name__}; "
                             f"the run folder is damaged")
    return record


def load_run_config(run: str | Path | RunFolder) -> tuple[RunFolder, TrainConfig]:
    """(checked run folder, its TrainConfig): the first step of every command given --run."""
    folder = RunFolder.existing(run)
    return folder, folder.config()
