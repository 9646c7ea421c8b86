"""`vesselseg <command> ...` (also `python -m vesselseg ...`): one entry point for every step.

Each command is the same as `python -m vesselseg.<command>`; `vesselseg <command> --help` shows
its options.
"""
from __future__ import annotations

import importlib
import sys

from . import __version__

#: Command -> what it does (the modules' own parsers hold the options).
COMMANDS = {
    "preprocess": "turn a dataset into model inputs, masks and a manifest",
    "train": "train a U-Net on preprocessed folders (one new run folder per run)",
    "calibrate": "choose a run's decision threshold on its validation images",
    "test": "per-image and pooled metrics on annotated images",
    "eval": "segment photos or folders (no annotation needed)",
    "export": "export a run as ONNX, TFLite or SavedModel",
    "inspect": "show what an export carries: preprocessing, thresholds, model version",
    "compare": "runs side by side: settings, training, latest test metrics",
    "demo": "the whole workflow on generated data",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {what}" for name, what in COMMANDS.items()]
    return ("usage: vesselseg [--version] <command> [options]\n\n"
            "Retinal vessel segmentation with a U-Net.\n\ncommands:\n" + "\n".join(lines)
            + "\n\nvesselseg <command> --help shows a command's options.\n")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), end="")
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"vesselseg {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(usage(), end="", file=sys.stderr)
        print(f"\nvesselseg: error: unknown command {command!r}", file=sys.stderr)
        return 2
    from .cli import exit_now_if_model_call_abandoned

    return exit_now_if_model_call_abandoned(
        importlib.import_module(f"vesselseg.{command}").main(rest))


if __name__ == "__main__":
    sys.exit(main())
