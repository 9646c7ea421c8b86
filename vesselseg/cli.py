"""Shared command-line plumbing: every CLI prints package errors as one clear line and exits 1."""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from .errors import VesselsegError


def describe_os_error(exc: OSError) -> str:
    """`<path>: <reason>` for an OSError (disk full, permission denied, not a folder...)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    names = [str(name) for name in (exc.filename, exc.filename2) if name is not None]
    return f"{' -> '.join(names)}: {reason}" if names else reason


def simulate_crash(variable: str, done: int) -> None:
    """Crash tests: SIGKILL this process when the environment variable `variable` equals `done`
    (the count of finished units of work). Lets tests kill a command at an exact point, with no
    timing involved; unset, it does nothing."""
    import signal

    wanted = os.environ.get(variable)
    if wanted and int(wanted) == done:
        os.kill(os.getpid(), signal.SIGKILL)


def run_cli(main: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser,
            argv: Sequence[str] | None = None) -> int:
    """Parse argv, run `main`, and turn VesselsegError and OSError (unwritable output, full
    disk...) into `error: ...` with exit status 1, never a traceback."""
    # TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notes) is not for users; it must be
    # set before TensorFlow is imported, which every command does lazily inside `main`.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = parser.parse_args(argv)
    try:
        return main(args)
    except VesselsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


#: The commands whose `--help` README's "Command reference" reproduces (a test keeps it in step).
REFERENCE_COMMANDS = ("preprocess", "train", "test", "eval", "export")
HELP_WIDTH = 100


def help_text(module: str, width: int = HELP_WIDTH) -> str:
    """`python -m vesselseg.<module> --help` at a fixed width (independent of the terminal)."""
    import importlib

    parser = importlib.import_module(f"vesselseg.{module}").build_parser()
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        return parser.format_help().rstrip() + "\n"
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


def command_reference() -> str:
    """README's "Command reference" body: every command's --help in a text block."""
    blocks = []
    for module in REFERENCE_COMMANDS:
        blocks.append(f"### `python -m vesselseg.{module}`\n\n```text\n{help_text(module)}```\n")
    return "\n".join(blocks)


if __name__ == "__main__":  # python -m vesselseg.cli: print the README command reference
    print(command_reference(), end="")
