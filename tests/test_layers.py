"""The import layers of docs/ARCHITECTURE.md: training and inference never import each other, the stage
contract imports neither, and kitseg's subpackages import each other without cycles.

Every ``import``/``from ... import`` of the source is read (also those inside functions), so an
import made on use counts like one at the top of a file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "kitseg"


def _unit(module: str) -> str:
    """kitseg.training.loop -> training; kitseg.io -> io (a top-level module is its own unit)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "kitseg"


def _module_of(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph() -> dict[str, dict[str, set[str]]]:
    """unit -> imported unit -> the files (relative) that import it."""
    graph: dict[str, dict[str, set[str]]] = {}
    for path in sorted(SRC.rglob("*.py")):
        module = _module_of(path)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    names = [".".join(base + ([node.module] if node.module else []))]
                else:
                    names = [node.module or ""]
                if names[0] == "kitseg":  # from kitseg import io, postprocessing
                    names = [f"kitseg.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith("kitseg.") and _unit(name) != _unit(module):
                    graph.setdefault(_unit(module), {}).setdefault(_unit(name), set()).add(
                        str(path.relative_to(SRC)))
    return graph


def _reaches(graph, start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        u = todo.pop()
        for v in graph.get(u, {}):
            if v == goal:
                return True
            if v not in seen:
                seen.add(v)
                todo.append(v)
    return False


@pytest.mark.parametrize("importer, imported", [
    ("inference", "training"), ("training", "inference"), ("stages", "training"), ("stages", "inference"),
])
def test_forbidden_imports(importer, imported):
    files = import_graph().get(importer, {}).get(imported, set())
    assert not files, f"{importer} imports {imported} in {sorted(files)} (docs/ARCHITECTURE.md: layers)"
    assert not _reaches(import_graph(), importer, imported), f"{importer} reaches {imported} through other units"


def test_no_import_cycle_between_subpackages():
    graph = import_graph()
    cycles = sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if _reaches(graph, b, a)})
    detail = {f"{a} <-> {b}": sorted(graph[a].get(b, set()) | graph.get(b, {}).get(a, set())) for a, b in cycles}
    assert not cycles, f"import cycles between kitseg's units: {detail}"


def test_the_graph_sees_imports():
    graph = import_graph()
    assert "stages" in graph["inference"] and "stages" in graph["training"]
    assert "recipes" in graph["stages"]
