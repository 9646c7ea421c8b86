"""Cohort inputs for `eval`: a CSV of photos or a text list of photo paths, read as a stream.

A cohort is rarely one tidy folder: it is a table exported from a study database, naming each
photo's file and often an ID and the camera's pixel size. Two conventions, chosen by the file's
suffix (neither is an image suffix, so there is no ambiguity with a photo):

- `NAME.csv`: a header row, then one photo per row. The path column is "path" (or "image" when
  there is no "path"; `path_column` names another). Optional columns: "id" (the photo's name in
  results.csv and of its output files; unique; may hold subfolders, "site1/p001", never leave
  the output folder) and "pixel_size_um" (micrometres per pixel for this photo; empty: the
  command's --pixel-size-um). Other columns are ignored.
- `NAME.txt`: one photo path per line; blank lines and lines starting with # are skipped.

Relative paths are relative to the list's own folder (a list travels with its photos). The same
photo listed twice is an error naming both lines (its results.csv row would be ambiguous). A
missing photo is not checked here: it becomes that photo's failed row, so 100,000 paths cost no
up-front file checks.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DatasetError
from .io import is_plain_name

#: The suffixes that make an eval input a list of photos rather than a photo.
CSV_SUFFIX, TEXT_SUFFIX = ".csv", ".txt"
PATH_COLUMNS = ("path", "image")
ID_COLUMN, PIXEL_SIZE_COLUMN = "id", "pixel_size_um"


class PhotoListError(DatasetError):
    """A CSV or text list of photos that cannot be used (exit 3, like a missing input)."""


@dataclass
class PhotoList:
    """The photos of one list, in order, with the per-photo values it gives."""

    source: Path
    images: list[Path] = field(default_factory=list)
    ids: dict[Path, str] = field(default_factory=dict)
    pixel_sizes: dict[Path, float] = field(default_factory=dict)


def is_photo_list(path: str | Path) -> bool:
    """True for a file eval reads as a list of photos (.csv or .txt)."""
    return Path(path).suffix.lower() in (CSV_SUFFIX, TEXT_SUFFIX)


def read_photo_list(path: str | Path, path_column: str | None = None) -> PhotoList:
    """The photos a .csv or .txt list names; a bad list raises PhotoListError naming the file
    and the line."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            if path.suffix.lower() == CSV_SUFFIX:
                result = _read_csv(path, handle, path_column)
            else:
                result = _read_text(path, handle)
    except UnicodeDecodeError as exc:
        raise PhotoListError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"
                             ) from None
    except csv.Error as exc:
        raise PhotoListError(f"{path}: not a readable CSV file ({exc})") from None
    except OSError as exc:
        raise PhotoListError(f"{path}: cannot read the list ({exc.strerror or exc})") from None
    if not result.images:
        raise PhotoListError(f"{path}: lists no photos")
    return result


def _read_text(path: Path, handle) -> PhotoList:
    result, seen = PhotoList(path), {}
    for number, line in enumerate(handle, start=1):
        entry = line.strip()
        if entry and not entry.startswith("#"):
            _add(result, seen, _resolve(path, entry), number)
    return result


def _read_csv(path: Path, handle, path_column: str | None) -> PhotoList:
    reader = csv.DictReader(handle)
    header = [name.strip() for name in reader.fieldnames or []]
    if not header:
        raise PhotoListError(f"{path}, line 1: empty file; a CSV of photos needs a header row "
                             f"with a {' or '.join(PATH_COLUMNS)} column")
    reader.fieldnames = header
    column = path_column or next((name for name in PATH_COLUMNS if name in header), None)
    if column is None or column not in header:
        wanted = repr(path_column) if path_column else " or ".join(map(repr, PATH_COLUMNS))
        raise PhotoListError(f"{path}, line 1: no {wanted} column among "
                             f"{', '.join(header)} (the column of photo paths)")
    result, seen, id_lines = PhotoList(path), {}, {}
    for row in reader:
        number = reader.line_num
        if None in row:
            raise PhotoListError(f"{path}, line {number}: more cells than the header has "
                                 f"columns")
        value = (row.get(column) or "").strip()
        if not value:
            raise PhotoListError(f"{path}, line {number}: empty {column!r} cell")
        image = _resolve(path, value)
        _add(result, seen, image, number)
        photo_id = (row.get(ID_COLUMN) or "").strip()
        if ID_COLUMN in header:
            _check_id(path, number, photo_id)
            if photo_id in id_lines:
                raise PhotoListError(f"{path}, line {number}: id {photo_id!r} is also on line "
                                     f"{id_lines[photo_id]} (ids must be unique)")
            id_lines[photo_id] = number
            result.ids[image] = photo_id
        size = (row.get(PIXEL_SIZE_COLUMN) or "").strip()
        if size:
            result.pixel_sizes[image] = _pixel_size(path, number, size)
    return result


def _resolve(list_path: Path, entry: str) -> Path:
    entry_path = Path(entry).expanduser()
    return entry_path if entry_path.is_absolute() else list_path.parent / entry_path


def _add(result: PhotoList, seen: dict[Path, int], image: Path, number: int) -> None:
    import os

    key = Path(os.path.normpath(image))
    if key in seen:
        raise PhotoListError(f"{result.source}, line {number}: {image} is also on line "
                             f"{seen[key]} (each photo once)")
    seen[key] = number
    result.images.append(image)


def _check_id(path: Path, number: int, photo_id: str) -> None:
    """An id names output files: relative, plain parts, nothing hidden, no way out of --out."""
    parts = photo_id.split("/")
    if not photo_id or not all(is_plain_name(part) and not part.startswith(".")
                               and "\x00" not in part for part in parts):
        raise PhotoListError(f"{path}, line {number}: id {photo_id!r} cannot name output files "
                             f"(give a name, or folder/name, without .., a leading / or a "
                             f"leading dot)")


def _pixel_size(path: Path, number: int, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise PhotoListError(f"{path}, line {number}: {PIXEL_SIZE_COLUMN} {text!r} is not a "
                             f"positive number of micrometres")
    return value
