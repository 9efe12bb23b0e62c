"""The floor plan: each package imports only packages below it, and no two import each other.

Read from the code's own import statements (every one, also those inside functions and under
``TYPE_CHECKING``), so a late import cannot hide an upward edge. docs/ARCHITECTURE.md's code map
lists the same layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Bottom to top. A package may import its own modules and those of any package on a lower line;
# packages on one line are siblings and import neither each other nor anything above.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("core",),  # settings, money, errors, keys, order key, db, Temporal connection, broker client
    ("activities", "brokersim"),  # side effects, one module per outside system; the simulator
    ("workflows",),  # deterministic saga and reconciler
    ("worker", "feeds"),  # the worker process; the listener and market-data feed processes
    ("ordersaga",),  # the client SDK: place, cancel, status, accounts, schedules
    ("devstack",),  # the local stack: dev server, simulator, feeds, workers as processes
    ("chaos", "bench"),  # the chaos harness and the benchmarks
    ("cli",),  # the ``ordersaga`` command line
)
RANK = {pkg: i for i, line in enumerate(LAYERS) for pkg in line}


def imported_packages(path: Path) -> set[str]:
    """The project packages a module imports (top-level names only)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(RANK)


def package_imports() -> dict[str, dict[str, list[str]]]:
    """package -> imported package -> the files that import it."""
    edges: dict[str, dict[str, list[str]]] = {}
    for pkg in RANK:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for dep in imported_packages(path) - {pkg}:
                edges.setdefault(pkg, {}).setdefault(dep, []).append(str(path.relative_to(ROOT)))
    return edges


def upward_edges(edges: dict[str, dict[str, list[str]]]) -> list[str]:
    return [
        f"{pkg} imports {dep} (rank {RANK[dep]} is not below {RANK[pkg]}): {', '.join(files)}"
        for pkg, deps in sorted(edges.items())
        for dep, files in sorted(deps.items())
        if RANK[dep] >= RANK[pkg]
    ]


def test_every_layer_is_a_package_of_the_project() -> None:
    for pkg in RANK:
        assert (ROOT / pkg / "__init__.py").is_file(), f"{pkg}/ is not a package"


def test_no_package_imports_one_above_it_or_a_sibling() -> None:
    assert upward_edges(package_imports()) == []


def test_no_two_packages_import_each_other() -> None:
    edges = package_imports()
    pairs = sorted(
        (a, b) for a, deps in edges.items() for b in deps if a < b and a in edges.get(b, {})
    )
    assert pairs == []


def test_top_level_packages_are_all_placed() -> None:
    """A new top-level package must be given a layer, or this test could not see it."""
    found = {
        p.name
        for p in ROOT.iterdir()
        if (p / "__init__.py").is_file() and p.name not in {"tests", "deploy"}
    }
    assert found == set(RANK)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from workflows.order import OrderWorkflow\n", {"workflows"}),
        ("def f():\n    import cli.main\n", {"cli"}),
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from worker import main\n",
            {"worker"},
        ),
        ("from . import sibling\nimport json\n", set()),
    ],
)
def test_the_reader_sees_every_kind_of_import(
    tmp_path: Path, source: str, expected: set[str]
) -> None:
    module = tmp_path / "m.py"
    module.write_text(source)
    assert imported_packages(module) == expected


def test_an_upward_import_is_reported() -> None:
    edges = {"core": {"workflows": ["core/x.py"]}, "cli": {"core": ["cli/main.py"]}}
    assert upward_edges(edges) == ["core imports workflows (rank 2 is not below 0): core/x.py"]
