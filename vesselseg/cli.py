"""Shared command-line plumbing: every command prints package errors as one clear line and exits
1, shares the options that mean the same thing everywhere (--run, --tta, --scales...), and makes
its configuration flags from the config dataclasses."""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from .errors import ConfigError, VesselsegError


def describe_os_error(exc: OSError) -> str:
    """`<path>: <reason>` for an OSError (disk full, permission denied, not a folder...)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    names = [str(name) for name in (exc.filename, exc.filename2) if name is not None]
    return f"{' -> '.join(names)}: {reason}" if names else reason


def run_cli(main: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser,
            argv: Sequence[str] | None = None) -> int:
    """Parse argv, run `main`, and turn VesselsegError and OSError (unwritable output, full
    disk...) into `error: ...` with the error's exit status, never a traceback.

    Every command gets --version, -q/--quiet and -v/--verbose here, so they mean the same
    everywhere: quiet drops progress and per-item lines (errors still show); verbose lets
    TensorFlow's own start-up log lines through, which are dropped otherwise."""
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    if not args.verbose:
        # must be set before TensorFlow is imported, which every command does lazily in `main`
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from .console import native_log_filter, warnings_as_lines

    with native_log_filter(enabled=not args.verbose), warnings_as_lines():
        try:
            return main(args)
        except VesselsegError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        except OSError as exc:
            print(f"error: {describe_os_error(exc)}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130


#: Exit statuses shared by every command (documented in each --help).
EXIT_STATUS_HELP = ("exit status: 0 done; 1 failed (eval: some photos failed); 2 usage error "
                    "(bad flags or settings); 3 nothing could be processed")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """--version, -q/--quiet and -v/--verbose (added by run_cli to every command)."""
    from . import __version__

    present = {option for action in parser._actions for option in action.option_strings}
    if "--version" not in present:
        parser.add_argument("--version", action="version", version=f"vesselseg {__version__}")
    if "--quiet" not in present:
        parser.add_argument("-q", "--quiet", action="store_true",
                            help="no progress bars or per-item lines (errors still print)")
    if "--verbose" not in present:
        parser.add_argument("-v", "--verbose", action="store_true",
                            help="also show TensorFlow's own start-up and device log lines")
    if parser.epilog is None:
        parser.epilog = EXIT_STATUS_HELP


def add_run_argument(parser: argparse.ArgumentParser) -> None:
    """--run, the same on every command that uses a trained model."""
    parser.add_argument("--run", metavar="RUN",
                        help="run folder from vesselseg train, or 'pretrained' (default: the "
                             "shipped pretrained model)")



def exit_now_if_model_call_abandoned(code: int) -> int:
    """Returns `code`, unless Ctrl-C left a TensorFlow call running in a thread
    (`inference.call_interruptibly`): then the process ends here with os._exit(code), since
    finalizing the interpreter under a running op crashes it. For command entry points only,
    never for in-process calls (a notebook would lose its kernel)."""
    inference = sys.modules.get("vesselseg.inference")
    if inference is not None and inference.MODEL_CALL_ABANDONED.is_set():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code

def add_inference_arguments(parser) -> None:
    """The options of every command that runs a model (`test`, `eval`)."""
    from .backends import BACKENDS
    from .inference import INFERENCE_PRECISIONS

    parser.add_argument("--tta", action="store_true", help="average flipped predictions")
    add_scales_argument(parser)
    parser.add_argument("--backend", choices=BACKENDS, default="keras",
                        help="run the Keras model (default) or its ONNX / TFLite export "
                             "(made beforehand by vesselseg export; ONNX needs pip install "
                             "\"vesselseg[export]\"); with --model, the export's format")
    parser.add_argument("--model", metavar="EXPORT",
                        help="run this export file (.onnx, .tflite or a SavedModel folder, made "
                             "by vesselseg export) instead of --run: preprocessing, working size "
                             "and thresholds come from the file; --backend is inferred from it "
                             "(ONNX and TFLite run without TensorFlow)")
    parser.add_argument("--working-size", type=int,
                        help="run the model on an NxN version of the FOV crop: whole up to "
                             "1.5x the training size, else in overlapping windows of the "
                             "training size (e.g. 1024 for large photos; default: the run's "
                             "working_size, else the training size; an export takes only its "
                             "own size or larger)")
    parser.add_argument("--precision", choices=INFERENCE_PRECISIONS,
                        help="compute precision of the Keras model: bfloat16 is faster on CPUs "
                             "with AVX512-BF16 or AMX; auto = bfloat16 there, float32 on other "
                             "CPUs (never emulated bfloat16), as trained on a GPU (default: auto "
                             "for the shipped model; a --run runs as trained). train's auto "
                             "differs: it keeps float32 on CPUs")
    parser.add_argument("--threshold", type=_threshold_argument,
                        help="decision threshold (default: the model's validation-chosen one)")


def _number(text: str, kind: type = float):
    """`text` as a finite int or float, or argparse's usage error (exit 2)."""
    import math

    try:
        value = kind(text)
    except ValueError:
        noun = "whole number" if kind is int else "number"
        raise argparse.ArgumentTypeError(f"{text!r} is not a {noun}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _threshold_argument(text: str) -> float:
    """A decision threshold: a number in [0, 1] (NaN or 5 would silently give empty or full
    masks)."""
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a probability in [0, 1]")
    return value


def positive_int(text: str) -> int:
    """A flag's whole number of at least 1 (a batch size, a count)."""
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def positive_float(text: str) -> float:
    """A flag's finite number above 0 (a pixel size)."""
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def _scales_argument(text: str) -> tuple[float, ...]:
    """parse_scales for argparse: a bad list is a usage error (exit 2), not a traceback."""
    import argparse

    from .inference import parse_scales

    try:
        return parse_scales(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_scales_argument(parser, prefix: str = "") -> None:
    """--scales, for every command that runs (or chooses a threshold for) a model."""
    from .inference import MULTI_SCALES

    multi = ",".join(f"{x:g}" for x in MULTI_SCALES)
    parser.add_argument("--scales", type=_scales_argument, default=(1.0,), metavar="LIST",
                        help=f"{prefix}average predictions at these magnifications of the "
                             f"working size, e.g. 1,1.25, or 'multi' for {multi} (more accurate, "
                             f"slower: the work grows with the sum of the squared factors; "
                             f"default 1)")


def segmenter_from_args(args):
    """The Segmenter of `--run` (default: the shipped model) with the options above."""
    kwargs = {"tta": args.tta, "scales": args.scales, "backend": args.backend,
              "precision": args.precision}
    if args.threshold is not None:
        kwargs["threshold"] = args.threshold
    if args.working_size is not None:
        kwargs["working_size"] = args.working_size
    from .inference import Segmenter

    if getattr(args, "model", None):
        if args.run is not None:
            raise ConfigError("give --model (an export file) or --run (a run folder), not both")
        if args.precision not in (None, "auto", "float32"):
            raise ConfigError(f"precision: {args.precision} runs with the Keras model only; an "
                              f"export runs in the precision it was exported in")
        kwargs.pop("precision")
        kwargs["backend"] = None if args.backend == "keras" else args.backend
        return Segmenter.from_export(args.model, **kwargs)
    if args.run in (None, "pretrained"):
        return Segmenter.pretrained(**kwargs)
    return Segmenter.from_run(args.run, **kwargs)



# -- flags made from the config dataclasses --------------------------------------------------
def _flag_type(annotation):
    import typing

    if typing.get_origin(annotation) is list:
        return {"nargs": "+"}
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    return {"type": annotation}


def add_config_arguments(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = (),
                         flags: dict[str, tuple[str, ...]] | None = None) -> None:
    """One flag per scalar field of the dataclass `cls` (`--base-filters` for base_filters),
    its help and choices from the field's metadata and its default shown: the config is the
    one source of truth. Flags default to None, so an unset flag never overrides a config
    file. `flags` adds aliases of a field's flag (same meaning, e.g. a name kept from an
    earlier version)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    defaults = cls()  # every config dataclass has a default for every field
    for item in dataclasses.fields(cls):
        annotation = hints[item.name]
        if item.name in skip or dataclasses.is_dataclass(annotation):
            continue
        names = [f"--{item.name.replace('_', '-')}", *(flags or {}).get(item.name, ())]
        default = getattr(defaults, item.name)
        shown = " ".join(default) if isinstance(default, list) else default
        help_text = item.metadata.get("help", item.name.replace("_", " "))
        kwargs = _flag_type(annotation)
        if "choices" in item.metadata:
            kwargs["choices"] = item.metadata["choices"]
        parser.add_argument(*names, dest=item.name, default=None,
                            help=f"{help_text} (default: {shown!s})".replace("%", "%%"),
                            **kwargs)


def config_overrides(args: argparse.Namespace, cls) -> dict:
    """The fields of `cls` that flags set (not None) in `args`."""
    import dataclasses

    names = {item.name for item in dataclasses.fields(cls)}
    return {key: value for key, value in vars(args).items()
            if key in names and value is not None}


#: The commands whose `--help` docs/cli.md reproduces (a test keeps it in step).
REFERENCE_COMMANDS = ("preprocess", "train", "calibrate", "test", "eval", "export", "inspect",
                      "compare")
HELP_WIDTH = 100


def help_text(module: str, width: int = HELP_WIDTH) -> str:
    """`python -m vesselseg.<module> --help` at a fixed width (independent of the terminal)."""
    import importlib

    parser = importlib.import_module(f"vesselseg.{module}").build_parser()
    add_common_arguments(parser)  # as run_cli adds them
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
    """docs/cli.md: every command's --help in a text block."""
    blocks = ["# Command reference\n\nEvery command's `--help`, generated by\n`python -m "
              "vesselseg.cli > docs/cli.md` (a test keeps it in step). `vesselseg STEP` and\n"
              "`python -m vesselseg.STEP` are the same command.\n"]
    for module in REFERENCE_COMMANDS:
        blocks.append(f"## `vesselseg {module}`\n\n```text\n{help_text(module)}```\n")
    return "\n".join(blocks)


if __name__ == "__main__":  # python -m vesselseg.cli > docs/cli.md: the command reference
    print(command_reference(), end="")
