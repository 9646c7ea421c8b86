"""Shared command-line plumbing: every CLI prints package errors as one clear line and exits 1."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .errors import VesselsegError


def run_cli(main: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser,
            argv: Sequence[str] | None = None) -> int:
    """Parse argv, run `main`, and turn VesselsegError into `error: ...` with exit status 1."""
    args = parser.parse_args(argv)
    try:
        return main(args)
    except VesselsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
