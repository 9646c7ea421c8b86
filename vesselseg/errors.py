"""The package's own error types, so callers can catch one thing and CLIs can print it cleanly."""
from __future__ import annotations

from pathlib import Path


class VesselsegError(Exception):
    """Base class of every error the package raises on purpose (bad input, bad config...)."""


class ImageReadError(VesselsegError):
    """A file could not be read as an image; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class DatasetError(VesselsegError):
    """A dataset folder is missing, empty or inconsistent."""


class ConfigError(VesselsegError):
    """A configuration file or value is invalid; the message names the key."""


class ModelLoadError(VesselsegError):
    """A run folder or model file is missing, unsafe or not a vesselseg model."""
