"""The package's own error types: callers catch one base class, or the one that says what went
wrong (the input, the settings, the run folder, the model file); CLIs print them as one line.

Every message names the file or the configuration key at fault.
"""
from __future__ import annotations

from pathlib import Path


class VesselsegError(Exception):
    """Base class of every error the package raises on purpose."""

    #: The command's exit status when this error stops it (cli.EXIT_STATUS_HELP).
    exit_code = 1


class InputError(VesselsegError):
    """Bad input data: a photo, an annotation or a dataset folder."""


class ImageReadError(InputError):
    """A file could not be read as an image; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class DatasetError(InputError):
    """A dataset folder is missing, empty or inconsistent."""


class NothingProcessed(InputError):
    """Not one item (photo, image) could be processed: the command did nothing useful."""

    exit_code = 3


class ConfigError(VesselsegError):
    """A configuration file or value is invalid; the message names the key."""

    exit_code = 2  # a usage error, like a bad flag


class ModelLoadError(VesselsegError):
    """A model cannot be loaded: the run folder or the model file is at fault."""


class RunFolderError(ModelLoadError):
    """A run folder is missing, incomplete, unfinished or not a vesselseg run."""


class ModelFileError(ModelLoadError):
    """A model file is missing, unsafe (carries code) or not a vesselseg model."""


class ExportError(ModelFileError):
    """A model could not be exported, loaded from an export, or the export is not faithful."""


class ExportExistsError(ExportError):
    """The target of an export already exists and overwriting was not asked for."""


class ExportVerificationError(ExportError):
    """The exported model's probabilities differ too much from the Keras model's."""
