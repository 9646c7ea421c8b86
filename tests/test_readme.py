"""README's commands work as written: every `python -m vesselseg...` line of its bash blocks parses
with the current command line, and each one that needs no long training runs, in order, in a
fresh folder laid out like a clone (with `../shared/datasets` beside it)."""
from __future__ import annotations

import importlib
import re
import shlex
import shutil
from pathlib import Path

import pytest
from skimage import data as skdata

from vesselseg.io import write_png

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
#: Commands that train for minutes to hours, or join two such runs (tests/test_ensemble.py runs
#: that one on tiny runs): only checked to parse.
LONG = ("vesselseg.train", "vesselseg.benchmarks.", "vesselseg.ensemble")


def readme_commands() -> list[list[str]]:
    """`python -m vesselseg...` lines of the README's bash blocks, as argument lists."""
    text = README.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("python -m vesselseg"):
                commands.append(shlex.split(line))
    return commands


def _module(command: list[str]):
    return importlib.import_module(command[2])


def _args(command: list[str], run: Path) -> list[str]:
    return [run.as_posix() if "<run>" in arg else arg for arg in command[3:]]


def test_readme_has_the_workflow_commands():
    modules = {command[2] for command in readme_commands()}
    assert {"vesselseg.preprocess", "vesselseg.train", "vesselseg.test",
            "vesselseg.eval"} <= modules


@pytest.mark.parametrize("command", readme_commands(), ids=" ".join)
def test_every_readme_command_parses(command, tiny_run):
    _module(command).build_parser().parse_args(_args(command, tiny_run))


def test_readme_commands_run_as_written(tiny_run, shared_datasets, tmp_path, monkeypatch,
                                        capsys):
    from vesselseg.datasets import write_synthetic_dataset

    run = shutil.copytree(tiny_run, tmp_path / "run")  # the shared run stays untouched
    workspace = tmp_path / "clone"
    workspace.mkdir()
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "datasets").symlink_to(shared_datasets)
    (workspace / "my_photos").mkdir()
    write_png(workspace / "my_photos" / "retina.png", skdata.retina())
    synthetic = write_synthetic_dataset(tmp_path / "synthetic", count=4, size=128, seed=0)
    shutil.copytree(synthetic, workspace / "my_data")
    monkeypatch.chdir(workspace)
    ran = []
    for command in readme_commands():
        if command[2].startswith(LONG):
            continue
        code = _module(command).main(_args(command, run))
        assert code == 0, (command, capsys.readouterr().err[-2000:])
        ran.append(command[2])
    assert {"vesselseg.preprocess", "vesselseg.test", "vesselseg.eval"} <= set(ran)
    assert (workspace / "data" / "drive_clahe" / "manifest.csv").exists()
    assert (workspace / "data" / "mine" / "manifest.csv").exists()
    assert (workspace / "artifacts" / "eval" / "mine" / "retina_overlay.png").exists()
    assert list((workspace / "artifacts" / "eval").glob("*_eval/retina_overlay.png"))
    assert list((run / "tests").glob("*/metrics.csv"))
