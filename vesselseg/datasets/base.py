"""What every dataset reader yields, and the registry that finds readers by name."""
from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DatasetError
from ..io import is_image_file

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    """One annotated photo: where its files are and which split it belongs to."""

    id: str
    dataset: str
    split: str
    image: Path
    annotation: Path | None
    fov: Path | None = None
    second_observer: Path | None = None


@dataclass
class ReadResult:
    """Samples found, plus images that were skipped and why (reported, never silently lost),
    and notes about entries that are not files at all (dangling links, link loops)."""

    samples: list[Sample]
    skipped: list[tuple[Path, str]]
    notes: list[str] = field(default_factory=list)


Reader = Callable[[Path], ReadResult]
_READERS: dict[str, Reader] = {}
_DEFAULT_SOURCES: dict[str, str] = {}


def register_reader(name: str, default_source: str | None = None) -> Callable[[Reader], Reader]:
    """Decorator: make a reader available under `name` (used by --dataset)."""

    def decorate(func: Reader) -> Reader:
        _READERS[name] = func
        if default_source:
            _DEFAULT_SOURCES[name] = default_source
        return func

    return decorate


def reader_names() -> list[str]:
    return sorted(_READERS)


def get_reader(name: str) -> Reader:
    """The reader called `name`; an unknown name is an error listing the valid ones."""
    try:
        return _READERS[name]
    except KeyError:
        raise DatasetError(f"unknown dataset {name!r}; valid names: {', '.join(reader_names())}") \
            from None


def source_folder(name: str, source: str | Path | None) -> Path:
    """The folder dataset `name` is read from (None: the reader's default, e.g. generated)."""
    get_reader(name)
    if source is None:
        if name != "synthetic":
            raise DatasetError(f"dataset {name!r} needs --source (the folder it was unpacked in)")
        source = _DEFAULT_SOURCES.get(name, "data/synthetic")
    return Path(source)


def read_dataset(name: str, source: str | Path | None) -> ReadResult:
    """Read dataset `name` from folder `source` (None: the reader's default, e.g. generated)."""
    reader = get_reader(name)
    source = source_folder(name, source)
    if name != "synthetic":
        require_folder(source)
    result = reader(source)
    if not result.samples:
        raise DatasetError(f"{source}: no annotated images found for dataset {name!r}")
    return result


def require_folder(path: Path, what: str = "source folder") -> Path:
    if not path.exists():
        raise DatasetError(f"{path}: {what} does not exist")
    if not path.is_dir():
        raise DatasetError(f"{path}: {what} is not a folder")
    return path


def list_folder(folder: Path, notes: list[str] | None = None) -> list[Path]:
    """The entries of `folder`, sorted; a dangling symbolic link or a link loop among them is
    left out and named in `notes` instead of vanishing silently (Path.is_file() is simply False
    for them)."""
    entries = []
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink():
            try:
                entry.stat()
            except OSError as exc:
                if notes is not None and is_image_file(entry):
                    message = f"{entry}: {_broken_link(entry, exc)}; ignored"
                    if message not in notes:
                        notes.append(message)
                continue
        entries.append(entry)
    return entries


def _broken_link(entry: Path, exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "a symbolic link loop"
    try:
        target = os.readlink(entry)
    except OSError:
        target = "?"
    if exc.errno == errno.ENOENT:
        return f"a dangling symbolic link (its target {target} does not exist)"
    return f"a symbolic link that cannot be followed ({exc.strerror})"


def find_with_suffixes(folder: Path, stem: str, suffixes: tuple[str, ...],
                       notes: list[str] | None = None) -> Path | None:
    """The file `stem + suffix` in folder for the first suffix that exists (case-insensitive);
    broken links are left out (and named in `notes`)."""
    if not folder.is_dir():
        return None
    wanted = {(stem + s).lower() for s in suffixes}
    for candidate in list_folder(folder, notes):
        if candidate.name.lower() in wanted:
            return candidate
    return None
