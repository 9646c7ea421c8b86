"""Execute the walkthrough in place, so that it is committed with its outputs (`make notebook`).

TensorFlow's C++ start-up lines (absl banner, CUDA probing) reach the notebook as stderr
outputs; they are dropped (`vesselseg.console.is_native_log_line`, the filter the commands use),
everything else is kept as it ran.
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbclient
import nbformat

from vesselseg.console import is_native_log_line

NOTEBOOK = Path(__file__).resolve().parent / "walkthrough.ipynb"


def drop_native_log_lines(notebook) -> None:
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.outputs:
            if output.get("name") == "stderr":
                lines = [line for line in output.text.splitlines(keepends=True)
                         if line.strip() and not is_native_log_line(line.encode())]
                if not lines:
                    continue
                output.text = "".join(lines)
            kept.append(output)
        cell.outputs = kept


def main() -> int:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    drop_native_log_lines(notebook)
    nbformat.write(notebook, NOTEBOOK)
    print(f"executed {NOTEBOOK}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
