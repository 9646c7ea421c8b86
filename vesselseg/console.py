"""What the commands print: no TensorFlow start-up noise, and progress that suits where it goes.

TensorFlow's C++ libraries write start-up lines straight to file descriptor 2 (absl's "All log
messages before absl::InitializeLog()", CUDA probing, "failed call to cuInit") before any Python
setting can stop them; TF_CPP_MIN_LOG_LEVEL does not reach those. `native_log_filter` reroutes
descriptor 2 through a pipe that drops exactly those lines while Python's own `sys.stderr` keeps
writing to the real terminal, so progress bars still see a terminal. Progress is a live bar on a
terminal and a few plain lines in a log file.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

#: Lines of TensorFlow / XLA / absl native logging: "I0000 00:00:17.5 281 cudart_stub.cc:31] ..."
#: and the absl banner; the CUDA probing messages of a machine without a GPU.
_NATIVE_LOG = re.compile(
    rb"^(?:[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ [\w./-]+:\d+\]"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|.*(?:oneDNN custom operations are on|cuInit|cuda drivers|TensorRT))")

T = TypeVar("T")


def is_native_log_line(line: bytes) -> bool:
    """True for a line TensorFlow's C++ side prints on its own (not a vesselseg message)."""
    return bool(_NATIVE_LOG.match(line))


@contextlib.contextmanager
def native_log_filter(enabled: bool = True) -> Iterator[None]:
    """Within the block, native writes to descriptor 2 lose TensorFlow's log lines; everything
    else (Python tracebacks, warnings, messages from other libraries) passes unchanged.

    Python's sys.stderr is pointed at a duplicate of the original descriptor, so Python output
    bypasses the pipe, keeps its order, and `isatty()` still tells a terminal from a file."""
    if not enabled or not _has_fd(sys.stderr):
        yield
        return
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    saved_stderr = sys.stderr
    sys.stderr = io.TextIOWrapper(os.fdopen(os.dup(original), "wb", buffering=0),
                                  encoding=saved_stderr.encoding or "utf-8",
                                  errors="backslashreplace", line_buffering=True,
                                  write_through=True)
    forwarder = threading.Thread(target=_forward, args=(read_end, original), daemon=True)
    forwarder.start()
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        replacement, sys.stderr = sys.stderr, saved_stderr
        os.dup2(original, 2)  # closes the pipe's last write end: the forwarder drains and ends
        forwarder.join(timeout=5)
        with contextlib.suppress(OSError):
            replacement.close()
        os.close(original)


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Within the block, vesselseg's input warnings (io.InputWarning: a multi-page file, clipped
    values...) print as `warning: <file>: <what>` lines like the commands' own, not as Python's
    two-line warning with a source location."""
    import warnings

    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if category.__name__ == "InputWarning":
            print(f"warning: {message}", file=sys.stderr, flush=True)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


def _forward(read_end: int, target: int) -> None:
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        pending = b""
        while chunk := pipe.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if not is_native_log_line(line):
                    os.write(target, line + b"\n")
        if pending and not is_native_log_line(pending):
            os.write(target, pending)


def _has_fd(stream) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):  # pytest's capture, notebooks
        return False


def is_terminal(stream=None) -> bool:
    stream = stream or sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def progress(items: Iterable[T], total: int | None = None, desc: str = "",
             quiet: bool = False, unit: str = "img") -> Iterator[T]:
    """A live tqdm bar on a terminal; in a log file a plain line at every tenth of the work
    (no carriage returns or escape codes); nothing when quiet."""
    if quiet:
        yield from items
        return
    if is_terminal():
        from tqdm import tqdm

        yield from tqdm(items, total=total, desc=desc, unit=unit, file=sys.stderr)
        return
    step = max(1, (total or 0) // 10)
    count = 0
    for item in items:
        yield item
        count += 1
        if total and (count % step == 0 or count == total):
            print(f"{desc}: {count}/{total} {unit}", file=sys.stderr, flush=True)
