"""Shared command-line plumbing: every CLI prints package errors as one clear line and exits 1."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .errors import VesselsegError


def describe_os_error(exc: OSError) -> str:
    """`<path>: <reason>` for an OSError (disk full, permission denied, not a folder...)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    names = [str(name) for name in (exc.filename, exc.filename2) if name is not None]
    return f"{' -> '.join(names)}: {reason}" if names else reason


def run_cli(main: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser,
            argv: Sequence[str] | None = None) -> int:
    """Parse argv, run `main`, and turn VesselsegError and OSError (unwritable output, full
    disk...) into `error: ...` with exit status 1, never a traceback."""
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
