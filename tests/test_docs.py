"""README.md and docs/*.md work as written.

Every command line of their bash blocks that starts with `python -m vesselseg`, `vesselseg STEP`
(the console script: module `vesselseg.STEP`), `python -m benchmarks.` or `python -m experiments.`
parses with its module's command line. Each page's commands that need no long training run, in
order, in a fresh folder laid out like a clone (with `../shared/datasets` beside it), with the
`<run>` placeholder replaced by a tiny trained run. README.md stays a short newcomer's path, and
every relative link of the README and the docs points to an existing file.

docs/cli.md holds the commands' --help text (generated), not commands to run: it is left out.
"""
from __future__ import annotations

import importlib
import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from skimage import data as skdata

from vesselseg.io import write_png

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
#: The generated command reference: --help text, no bash blocks to run.
GENERATED = {DOCS / "cli.md"}
PAGES = [README] + sorted(page for page in DOCS.glob("*.md") if page not in GENERATED)
#: Commands that train for minutes to hours, measure on full datasets, or choose a threshold on a
#: long run's validation images: only checked to parse.
LONG = ("vesselseg.train", "vesselseg.calibrate", "benchmarks.", "experiments.")
README_MAX_LINES = 250

# The lab tools (benchmarks/, experiments/) run from the repository root of a clone.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@dataclass(frozen=True)
class Command:
    page: Path
    line: str
    module: str
    args: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(REPO_ROOT)}: {self.line}"

    @property
    def long(self) -> bool:
        return self.module.startswith(LONG)


def _command(page: Path, line: str) -> Command | None:
    tokens = shlex.split(line)
    if line.startswith(("python -m vesselseg", "python -m benchmarks.",
                        "python -m experiments.")):
        return Command(page, line, tokens[2], tuple(tokens[3:]))
    if tokens[0] == "vesselseg" and len(tokens) > 1 and not tokens[1].startswith("-"):
        return Command(page, line, f"vesselseg.{tokens[1]}", tuple(tokens[2:]))
    return None  # another tool (make, time, ...) or `vesselseg --version`


def page_commands(page: Path) -> list[Command]:
    """The package's command lines of one page's bash blocks, in order."""
    text = page.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = " ".join(line.split(" #")[0].split())
            if line and not line.startswith("#"):
                command = _command(page, line)
                if command:
                    commands.append(command)
    return commands


ALL_COMMANDS = [command for page in PAGES for command in page_commands(page)]
RUNNABLE_PAGES = [page for page in PAGES
                  if any(not command.long for command in page_commands(page))]


def _module(command: Command):
    return importlib.import_module(command.module)


def _args(command: Command, run: Path) -> list[str]:
    return [run.as_posix() if "<run>" in arg else arg for arg in command.args]


def test_readme_has_the_workflow_commands():
    modules = {command.module for command in page_commands(README)}
    assert {"vesselseg.preprocess", "vesselseg.train", "vesselseg.test",
            "vesselseg.eval"} <= modules


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines; keep it at most {README_MAX_LINES} and move the "
        f"rest to docs/")


def test_readme_keeps_the_ci_test_command():
    """CI reads its test command from the README: a bash block holding exactly `make test`."""
    text = README.read_text(encoding="utf-8")
    assert "```bash\nmake test\n```" in text


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


@pytest.mark.parametrize("page", [README] + sorted(DOCS.glob("*.md")),
                         ids=lambda page: str(page.relative_to(REPO_ROOT)))
def test_relative_links_point_to_existing_files(page):
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL, or an anchor within the page
        path = target.split("#")[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.name}: links to missing files: {broken}"


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=lambda command: command.id)
def test_every_docs_command_parses(command, tiny_run):
    _module(command).build_parser().parse_args(_args(command, tiny_run))


def _clone_like_workspace(tmp_path: Path, tiny_run: Path, shared_datasets: Path):
    """A folder laid out like a clone with `../shared/datasets` beside it, a photo in
    my_photos/, a small annotated set in my_data/, and a copy of the tiny run."""
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
    return workspace, run


def _run_page(page: Path, run: Path, capsys) -> list[str]:
    ran = []
    for command in page_commands(page):
        if command.long:
            continue
        code = _module(command).main(_args(command, run))
        assert code == 0, (command.id, capsys.readouterr().err[-2000:])
        ran.append(command.module)
    return ran


def test_readme_commands_run_as_written(tiny_run, shared_datasets, tmp_path, monkeypatch,
                                        capsys):
    workspace, run = _clone_like_workspace(tmp_path, tiny_run, shared_datasets)
    monkeypatch.chdir(workspace)
    ran = _run_page(README, run, capsys)
    assert {"vesselseg.preprocess", "vesselseg.test", "vesselseg.eval"} <= set(ran)
    assert (workspace / "data" / "drive_clahe" / "manifest.csv").exists()
    assert (workspace / "data" / "mine" / "manifest.csv").exists()
    assert (workspace / "artifacts" / "eval" / "mine" / "retina_overlay.png").exists()
    assert list((workspace / "artifacts" / "eval").glob("*_eval/retina_overlay.png"))
    assert list((run / "tests").glob("*/metrics.csv"))


@pytest.mark.parametrize("page", [page for page in RUNNABLE_PAGES if page != README],
                         ids=lambda page: str(page.relative_to(REPO_ROOT)))
def test_docs_commands_run_as_written(page, tiny_run, shared_datasets, tmp_path, monkeypatch,
                                      capsys):
    workspace, run = _clone_like_workspace(tmp_path, tiny_run, shared_datasets)
    monkeypatch.chdir(workspace)
    assert _run_page(page, run, capsys)
