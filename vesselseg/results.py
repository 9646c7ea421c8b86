"""An append-only CSV of per-item results that survives kills: each row is one write(2) followed
by fsync, so a killed run keeps every finished row; a torn last line (killed mid-write) is cut
off when the file is reopened, and `done` tells a resumed run what to skip."""
from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

from .errors import InputError


class ResultsFileError(InputError):
    """A results file that cannot be resumed (another layout, unreadable)."""


class ResultsFile:
    """`path`, with `columns` as its header. `key` names the column that identifies an item."""

    def __init__(self, path: str | Path, columns: Sequence[str], key: str):
        self.path = Path(path)
        self.columns = list(columns)
        self.key = key

    def start(self, resume: bool) -> set[str]:
        """Open for appending and return the keys already written (empty unless resuming).

        A fresh start writes the header (replacing an earlier file: the caller decides whether
        that is allowed); resuming keeps the complete rows and drops a torn last line."""
        if not resume or not self.path.exists():
            from .io import write_text_atomic

            write_text_atomic(self.path, _line(self.columns))
            return set()
        self._cut_torn_tail()
        with open(self.path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames != self.columns:
                raise ResultsFileError(
                    f"{self.path}: its columns ({', '.join(reader.fieldnames or [])}) are not "
                    f"the ones this command writes; resume with the same version and options, "
                    f"or choose another --out")
            return {row[self.key] for row in reader}

    def _cut_torn_tail(self) -> None:
        with open(self.path, "rb+") as handle:
            data = handle.read()
            end = data.rfind(b"\n") + 1
            if end != len(data):
                handle.truncate(end)
                handle.flush()
                os.fsync(handle.fileno())

    def append(self, row: dict) -> None:
        """Write one row whole (a single write, then fsync)."""
        missing = [column for column in self.columns if column not in row]
        if missing:
            raise KeyError(f"row lacks columns {missing}")
        data = _line([_cell(row[column]) for column in self.columns]).encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if value != value else f"{value:.6g}"  # NaN as an empty cell
    return str(value)


def _line(values: Sequence[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()
