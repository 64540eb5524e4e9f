"""Import layering: no cycle between lesionlab's modules, and no import from a lower layer to a higher one.

The layer order is read from docs/ARCHITECTURE.md (its "Layers" table), and every import statement in src/ is
found by walking the syntax trees, including imports inside functions and under ``TYPE_CHECKING``: a lazy import
is still a dependency.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
ARCHITECTURE = REPO / "docs" / "ARCHITECTURE.md"


def modules() -> dict[str, Path]:
    """Module name -> file, for every module of the package (a package's ``__init__`` under the package's name)."""
    out = {}
    for path in sorted((SRC / "lesionlab").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The lesionlab modules ``name`` imports (``from pkg import mod`` counts as importing ``pkg.mod``)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in known and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def layers() -> tuple[dict[str, int], set[int]]:
    """Package -> layer number from the ARCHITECTURE.md table, and the layers whose packages form one unit."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rank: dict[str, int] = {}
    units: set[int] = set()
    for line in section.splitlines():
        match = re.match(r"\|\s*(\d+)\s*\|([^|]*)\|(.*)\|\s*$", line)
        if match:
            number = int(match.group(1))
            for package in re.findall(r"`([\w.]+)`", match.group(2)):
                rank[package] = number
            if "one unit" in match.group(3):
                units.add(number)
    return rank, units


def package_of(module: str) -> str:
    """``lesionlab.serve.app`` -> ``serve``; the package root ``lesionlab`` stands for itself."""
    return module.split(".")[1] if "." in module else module


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_walker_sees_every_kind_of_import(tmp_path: Path) -> None:
    known = {"lesionlab.a": tmp_path, "lesionlab.b": tmp_path, "lesionlab.c": tmp_path, "lesionlab.pkg": tmp_path,
             "lesionlab.pkg.d": tmp_path}
    source = tmp_path / "a.py"
    source.write_text("from typing import TYPE_CHECKING\nimport lesionlab.b\nif TYPE_CHECKING:\n"
                      "    from lesionlab.c import X\ndef f():\n    from lesionlab.pkg import d\n")
    assert imports_of("lesionlab.a", source, known) == {"lesionlab.b", "lesionlab.c", "lesionlab.pkg.d"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_architecture_lists_every_package() -> None:
    rank, _ = layers()
    missing = sorted({package_of(m) for m in modules()} - set(rank))
    assert not missing, f"packages not in the Layers table of {ARCHITECTURE}: {missing}"


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


def test_no_import_from_a_lower_layer_to_a_higher_one() -> None:
    rank, units = layers()
    wrong = []
    for source, targets in import_graph().items():
        a = package_of(source)
        for target in sorted(targets):
            b = package_of(target)
            if a == b or rank[b] < rank[a] or (rank[b] == rank[a] and rank[a] in units):
                continue
            wrong.append(f"{source} (layer {rank[a]}) imports {target} (layer {rank[b]})")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(("lower", "higher"), [("serve", "train"), ("train", "evaluate"), ("evaluate", "train")])
def test_named_independences_hold(lower: str, higher: str) -> None:
    """What ARCHITECTURE.md says in words: serving never imports training, training and evaluation are apart."""
    graph = import_graph()
    bad = [f"{s} -> {t}" for s, ts in graph.items() for t in ts if package_of(s) == lower and package_of(t) == higher]
    assert not bad, bad
