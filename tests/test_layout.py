"""The package's shape: no import cycle, small modules (or a reason), the wheel holds the
product only, and nothing in the lab is imported by the product."""
from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vesselseg"
#: Longer modules must say why in their docstring (this phrase).
LONG_MODULE_LINES = 350


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The package modules `path` imports, at any depth (lazy imports inside functions count:
    they close a cycle just the same when they run)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from . import x` needs x, not the package itself (already initialised first)
            candidates = ([target] if node.module else []) + [f"{target}.{alias.name}"
                                                               for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found |= {c for c in candidates if c in known and c != name}
    return found


def import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(path) for path in files}
    return {module_name(path): imported_modules(path, known) for path in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 20 and "vesselseg.inference" in graph["vesselseg.calibrate"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_product_never_imports_the_lab():
    for path in sorted(PACKAGE.rglob("*.py")):
        text, name = path.read_text(encoding="utf-8"), path.name
        assert "import benchmarks" not in text and "from benchmarks" not in text, name
        assert "import experiments" not in text and "from experiments" not in text, name


def test_long_modules_say_why():
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > LONG_MODULE_LINES:
            docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
            assert f"Over {LONG_MODULE_LINES} lines" in docstring, (
                f"{path.relative_to(ROOT)}: {lines} lines; split it or say why in its docstring")


@pytest.mark.slow
def test_the_wheel_holds_the_product_only(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps",
                    "--no-build-isolation", "-q", "-w", str(tmp_path)], check=True,
                   capture_output=True, timeout=600)
    (wheel,) = tmp_path.glob("vesselseg-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "vesselseg/pretrained/best.keras" in names
    assert "vesselseg/recipes/pretrained.json" in names and "vesselseg/calibrate.py" in names
    for lab in ("benchmarks/", "experiments/", "distill", "ensemble", "ablations", "release"):
        assert not [n for n in names if lab in n], lab
    text = "".join(zipfile.ZipFile(wheel).read(n).decode("utf-8", "replace")
                   for n in names if n.endswith(".py"))
    assert "unet_pair" not in text
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "vesselseg = vesselseg.__main__:main" in zipfile.ZipFile(wheel).read(
        entry_points).decode()
