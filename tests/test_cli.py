"""The shared CLI plumbing, and README's command reference kept in step with every --help."""
import errno
from pathlib import Path

import pytest

from vesselseg.cli import REFERENCE_COMMANDS, command_reference, describe_os_error, help_text

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_reproduces_every_commands_help():
    text = README.read_text(encoding="utf-8")
    for module in REFERENCE_COMMANDS:
        assert help_text(module) in text, (
            f"README's help of vesselseg.{module} is out of date: regenerate the 'Command "
            f"reference' section with `python -m vesselseg.cli`")
    assert command_reference() in text


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
