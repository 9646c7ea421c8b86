"""The walkthrough notebook runs top to bottom without an error, and is committed executed.

The notebook is executed with nbclient in a kernel that runs *this* interpreter (sys.executable,
i.e. the project's virtual environment), with the notebook's folder as working directory, as
Jupyter would. Its outputs go to a temporary folder (the OUT_DIR parameter), never into the
repository.

Overrides, for a slower or faster machine:
  VESSELSEG_NOTEBOOK_PARAMS   JSON object of parameter overrides, e.g. '{"EPOCHS": 2, "SIZE": 128}'
                              (names of the notebook's "parameters" cell)
  VESSELSEG_NOTEBOOK_TIMEOUT  per-cell timeout in seconds (default 600)
  VESSELSEG_NOTEBOOK_SAVE     path: write the executed notebook there (to inspect its outputs)
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # executes the notebook: trains and tests a model

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO_ROOT / "notebooks"
WALKTHROUGH = NOTEBOOKS / "walkthrough.ipynb"
DRIVE = REPO_ROOT.parent / "shared" / "datasets" / "DRIVE"
KERNEL_NAME = "vesselseg-test-python"
#: The smallest settings: the test checks that every cell runs, not what the model learns.
SMALLEST = {"SIZE": 128, "SYNTHETIC_IMAGES": 8, "EPOCHS": 2, "STEPS_PER_EPOCH": 3,
            "AUGMENTED_COPIES": 3}


def _env_overrides() -> dict:
    text = os.environ.get("VESSELSEG_NOTEBOOK_PARAMS", "").strip()
    if not text:
        return {}
    overrides = json.loads(text)
    if not isinstance(overrides, dict):
        raise ValueError("VESSELSEG_NOTEBOOK_PARAMS must be a JSON object")
    return overrides


def _timeout() -> int:
    return int(os.environ.get("VESSELSEG_NOTEBOOK_TIMEOUT", "600"))


def _kernel_manager(tmp_path: Path):
    """A kernel manager whose only kernel spec runs sys.executable.

    jupyter_client would resolve "python3" through the user's and system's kernel folders first,
    where a spec may point at another Python; this one cannot.
    """
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = tmp_path / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "vesselseg test kernel", "language": "python"}), encoding="utf-8")
    specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")], ensure_native_kernel=False)
    return KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)


def _parameters_index(notebook) -> int:
    for index, cell in enumerate(notebook.cells):
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            return index
    raise AssertionError("the notebook has no cell tagged 'parameters'")


def _inject(notebook, overrides: dict) -> None:
    """Papermill-style: a cell after the parameters cell assigns the overrides."""
    index = _parameters_index(notebook)
    known = notebook.cells[index].source
    for name in overrides:
        assert f"\n{name} = " in f"\n{known}", f"{name} is not a parameter of the notebook"
    source = "\n".join(f"{name} = {value!r}" for name, value in overrides.items())
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(source))


def execute_walkthrough(tmp_path: Path, overrides: dict | None = None):
    """Execute a copy of the notebook in notebooks/; returns (executed notebook, seconds)."""
    notebook = nbformat.read(WALKTHROUGH, as_version=4)
    _inject(notebook, {"OUT_DIR": str(tmp_path / "out"), **(overrides or {})})
    probe = nbformat.v4.new_code_cell("import os, sys\nprint(sys.executable)\nprint(os.getcwd())")
    notebook.cells.append(probe)
    manager = _kernel_manager(tmp_path)
    client = nbclient.NotebookClient(notebook, km=manager, timeout=_timeout(),
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    start = time.monotonic()
    try:
        client.execute()  # raises CellExecutionError, naming the cell, when a cell fails
    finally:
        if manager.has_kernel:  # nbclient only shuts down kernels it created itself
            manager.shutdown_kernel(now=True)
    seconds = time.monotonic() - start
    if os.environ.get("VESSELSEG_NOTEBOOK_SAVE"):  # keep the executed copy to look at
        nbformat.write(notebook, os.environ["VESSELSEG_NOTEBOOK_SAVE"])

    errors = [output for cell in notebook.cells if cell.cell_type == "code"
              for output in cell.get("outputs", []) if output.output_type == "error"]
    assert not errors, errors
    executable, cwd = "".join(o.get("text", "") for o in notebook.cells[-1].outputs).split("\n")[:2]
    assert Path(executable) == Path(sys.executable), f"kernel ran {executable}"
    assert Path(cwd).resolve() == NOTEBOOKS.resolve(), f"kernel ran in {cwd}"
    return notebook, seconds


def _figures(notebook) -> int:
    return sum("image/png" in output.get("data", {}) for cell in notebook.cells
               if cell.cell_type == "code" for output in cell.get("outputs", []))


def test_walkthrough_runs_without_errors(tmp_path):
    """Top to bottom in a fresh kernel, at the smallest settings (DRIVE when present, else
    synthetic data), plus any overrides from the env. The committed copy shows a run at the
    notebook's own settings (`make notebook`, checked below)."""
    notebook, seconds = execute_walkthrough(tmp_path, {**SMALLEST, **_env_overrides()})
    print(f"walkthrough executed in {seconds:.0f} s")
    # samples, augmentation, learning curves, box plot, test panel, photo: all figures displayed
    # (an import that switches Matplotlib to Agg would silently drop them)
    assert _figures(notebook) >= 6
    runs = list((tmp_path / "out" / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "best.keras").exists()
    assert list((runs[0] / "tests").glob("*/metrics.csv"))
    if not DRIVE.is_dir():
        assert (tmp_path / "out" / "synthetic" / "split.csv").exists()


def test_committed_notebook_is_executed_with_small_figures():
    """Committed executed (`make notebook`), so that it teaches when viewed on the web: every
    code cell ran, in order, without an error; its figures are there and small; no output shows
    the folders of the machine that ran it."""
    notebook = nbformat.read(WALKTHROUGH, as_version=4)
    nbformat.validate(notebook)
    counts = [cell.execution_count for cell in notebook.cells if cell.cell_type == "code"]
    assert None not in counts and counts == sorted(counts), counts
    assert not [o for cell in notebook.cells if cell.cell_type == "code"
                for o in cell.outputs if o.output_type == "error"]
    assert _figures(notebook) >= 6
    assert WALKTHROUGH.stat().st_size < 2_500_000
    text = json.dumps([cell.get("outputs", []) for cell in notebook.cells])
    assert str(REPO_ROOT) not in text and str(Path.home()) not in text
    assert "absl" not in text and "cuInit" not in text  # TensorFlow's start-up noise dropped
    assert "widgets" not in notebook.metadata
