"""The package is a one-way house: no module imports from a higher floor, and no packages import each other in a
circle. Imports are read with ``ast`` (absolute and relative, at file scope or inside functions), so a lazy import
counts as much as one at the top of a file."""

from __future__ import annotations

import ast
import pathlib
from typing import Dict, List, Set, Tuple

import pytest

import maclcore

ROOT = pathlib.Path(maclcore.__file__).resolve().parent
PACKAGE = "maclcore"

# Lowest first. A package may import from its own floor and the floors below; units on one floor must not
# import each other in a circle. ``maclcore`` is the package's face (its ``__init__``: the version).
FLOORS: Dict[str, int] = {
    PACKAGE: 0, "errors": 0, "config": 0, "labels": 0,
    "runtime": 1,
    "io": 2,
    "data": 3,
    "models": 4, "losses": 4,
    "evaluation": 5,
    "inference": 6,
    "active": 7,
    "training": 8,
    "cli": 9, "demo": 9, "__main__": 9,
}

Edge = Tuple[str, str, str, int]  # (importing unit, imported unit, file, line)


def module_name(path: pathlib.Path, root: pathlib.Path, package: str) -> str:
    """``maclcore.data.cache`` for ``data/cache.py``; a package's ``__init__.py`` is the package itself."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package] + parts)


def unit_of(module: str, package: str, units: Set[str]) -> str:
    """The floor-holding unit of a module: its first subpackage or top-level module, else the package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in units else package


def imported_modules(tree: ast.AST, module: str, is_package: bool, package: str) -> List[Tuple[str, int]]:
    """Every package module a file imports, resolved to absolute names, with the line of the import."""
    found = []
    for node in ast.walk(tree):  # every depth: lazy imports inside functions count too
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # ``from maclcore import io`` imports the subpackage: name it so that its floor is found.
            found += [(f"{target}.{alias.name}" if target == package else target, node.lineno)
                      for alias in node.names]
    return [(name, line) for name, line in found if name == package or name.startswith(package + ".")]


def package_edges(root: pathlib.Path, package: str, units: Set[str]) -> List[Edge]:
    """(importer, imported, file, line) for every import between two different units of the package."""
    edges = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root, package)
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        source = unit_of(module, package, units)
        for target, line in imported_modules(tree, module, path.name == "__init__.py", package):
            imported = unit_of(target, package, units)
            if imported != source:
                edges.append((source, imported, str(path.relative_to(root)), line))
    return edges


def upward(edges: List[Edge], floors: Dict[str, int]) -> List[str]:
    """Imports from a lower floor to a higher one, as 'file:line: unit (floor) imports unit (floor)'."""
    return [f"{where}:{line}: {source} (floor {floors[source]}) imports {target} (floor {floors[target]})"
            for source, target, where, line in edges if floors[target] > floors[source]]


def cycles(edges: List[Edge]) -> List[List[str]]:
    """The groups of units that import each other in a circle (strongly connected components of two or more)."""
    graph: Dict[str, Set[str]] = {}
    for source, target, _, _ in edges:
        graph.setdefault(source, set()).add(target)
        graph.setdefault(target, set())

    def reachable(start: str) -> Set[str]:
        seen, stack = set(), [start]
        while stack:
            for following in graph[stack.pop()]:
                if following not in seen:
                    seen.add(following)
                    stack.append(following)
        return seen

    reach = {unit: reachable(unit) for unit in graph}
    groups = {frozenset(u for u in graph if u in reach[unit] and unit in reach[u]) | {unit}
              for unit in graph if unit in reach[unit]}
    return sorted(sorted(group) for group in groups)


def units_in(root: pathlib.Path) -> Set[str]:
    """The subpackages and top-level modules of a package folder."""
    names = {p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.py"))}
    return names | {p.stem for p in root.glob("*.py") if p.stem != "__init__"}


def test_every_unit_has_a_floor():
    missing = units_in(ROOT) - set(FLOORS)
    assert not missing, f"give these a floor in FLOORS: {sorted(missing)}"


def test_no_import_runs_from_a_lower_floor_to_a_higher_one():
    edges = package_edges(ROOT, PACKAGE, units_in(ROOT))
    assert edges, "no imports between units found: is the parser broken?"
    assert not upward(edges, FLOORS), "\n".join(upward(edges, FLOORS))


def test_no_packages_import_each_other_in_a_circle():
    found = cycles(package_edges(ROOT, PACKAGE, units_in(ROOT)))
    assert not found, f"import circles between units: {found}"


@pytest.mark.parametrize("lower", ["inference", "active"])
def test_inference_and_active_import_nothing_from_training(lower):
    edges = package_edges(ROOT, PACKAGE, units_in(ROOT))
    assert not [e for e in edges if e[0] == lower and e[1] == "training"]


def test_the_checker_sees_lazy_relative_and_absolute_imports_and_circles(tmp_path):
    """The rules above can fail: a made-up package with each kind of violation."""
    pkg = tmp_path / "pkg"
    for folder in ("low", "high", "side"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("")
    (pkg / "low" / "a.py").write_text("def f():\n    from ..high import b  # lazy, relative\n")
    (pkg / "low" / "c.py").write_text("import pkg.side.d\nfrom pkg import errors\nfrom . import a\n")
    (pkg / "side" / "d.py").write_text("from pkg.low.c import x\n")
    (pkg / "high" / "b.py").write_text("from ..low import a\n")
    units = units_in(pkg)
    assert units == {"low", "high", "side", "errors"}
    edges = package_edges(pkg, "pkg", units)
    assert {(s, t) for s, t, _, _ in edges} == {("low", "high"), ("low", "side"), ("low", "errors"),
                                                ("side", "low"), ("high", "low")}
    floors = {"pkg": 0, "errors": 0, "low": 1, "side": 1, "high": 2}
    assert upward(edges, floors) == ["low/a.py:2: low (floor 1) imports high (floor 2)"]
    assert cycles(edges) == [["high", "low", "side"]]
