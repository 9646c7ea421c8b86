"""The shared CLI plumbing: docs/cli.md kept in step with every --help, flags made from the
config dataclasses, the `vesselseg` console entry point, errors printed as one line."""
import argparse
import errno
import subprocess
import sys
from pathlib import Path

import pytest

from vesselseg.cli import (
    REFERENCE_COMMANDS,
    add_config_arguments,
    command_reference,
    config_overrides,
    describe_os_error,
    help_text,
)
from vesselseg.config import PreprocessConfig, TrainConfig

CLI_DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_docs_reproduce_every_commands_help():
    text = CLI_DOC.read_text(encoding="utf-8")
    for module in REFERENCE_COMMANDS:
        assert help_text(module) in text, (
            f"docs/cli.md's help of vesselseg {module} is out of date: regenerate it with "
            f"`python -m vesselseg.cli > docs/cli.md`")
    assert command_reference() == text


@pytest.mark.parametrize("module", REFERENCE_COMMANDS)
def test_help_text_does_not_depend_on_the_terminal(module, monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    narrow_terminal = help_text(module)
    monkeypatch.delenv("COLUMNS")
    assert help_text(module) == narrow_terminal
    assert max(len(line) for line in narrow_terminal.splitlines()) <= 100


def test_os_errors_name_the_path():
    error = OSError(errno.ENOSPC, "No space left on device", "/data/out.png")
    assert describe_os_error(error) == "/data/out.png: No space left on device"


def test_config_flags_come_from_the_dataclass_fields():
    """Every scalar TrainConfig field has a flag with the field's help; unset flags override
    nothing; lists take several values; booleans have a --no- form."""
    import dataclasses

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, TrainConfig)
    text = parser.format_help()
    for item in dataclasses.fields(TrainConfig):
        if item.name in ("augment", "preprocess"):
            continue
        assert f"--{item.name.replace('_', '-')}" in text, item.name
    assert config_overrides(parser.parse_args([]), TrainConfig) == {}
    args = parser.parse_args(["--data", "a", "b", "--no-batch-norm", "--epochs", "3",
                              "--lr-schedule", "cosine"])
    assert config_overrides(args, TrainConfig) == {"data": ["a", "b"], "batch_norm": False,
                                                   "epochs": 3, "lr_schedule": "cosine"}
    with pytest.raises(SystemExit):
        parser.parse_args(["--keep", "median"])  # choices from the field's metadata


def test_preprocess_flags_come_from_its_config():
    from vesselseg.preprocess import build_parser

    args = build_parser().parse_args(["--out", "x", "--clahe-clip", "3", "--no-crop"])
    assert config_overrides(args, PreprocessConfig) == {"clahe_clip": 3.0, "crop_to_fov": False}


def _console(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vesselseg", *args], capture_output=True,
                          text=True, timeout=120)


def test_the_vesselseg_command_dispatches_to_every_step():
    from vesselseg import __version__
    from vesselseg.__main__ import COMMANDS

    assert _console("--version").stdout.strip() == f"vesselseg {__version__}"
    listing = _console("--help").stdout
    assert all(name in listing for name in COMMANDS)
    for name in ("eval", "train", "calibrate"):
        done = _console(name, "--help")
        assert done.returncode == 0 and f"usage: vesselseg {name}" in done.stdout
    unknown = _console("segment")
    assert unknown.returncode == 2 and "unknown command 'segment'" in unknown.stderr


def test_the_console_script_is_installed():
    import shutil

    script = shutil.which("vesselseg", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("package not installed with its console scripts (pip install -e .)")
    done = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("vesselseg ")


#: Commands with results worth printing as JSON (train and preprocess print a summary line).
JSON_COMMANDS = ("calibrate", "test", "eval", "export", "inspect", "compare")


@pytest.mark.parametrize("module", REFERENCE_COMMANDS)
def test_every_command_has_the_common_flags_and_documents_its_exit_status(module):
    text = " ".join(help_text(module).split())
    for flag in ("--version", "-q, --quiet", "-v, --verbose"):
        assert flag in text, (module, flag)
    assert "exit status: 0 done" in text
    assert ("--json" in text) == (module in JSON_COMMANDS) or module in JSON_COMMANDS
    if module in JSON_COMMANDS:
        assert "--json" in text


@pytest.mark.parametrize("module", ["calibrate", "export", "compare"])
def test_version_flag_prints_the_package_version(module, capsys):
    import importlib

    from vesselseg import __version__

    with pytest.raises(SystemExit) as stop:
        importlib.import_module(f"vesselseg.{module}").main(["--version"])
    assert stop.value.code == 0 and __version__ in capsys.readouterr().out
