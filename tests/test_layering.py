"""The package layering the README draws, checked from the imports themselves.

    cli   dags                              entry points: the `ebr` command, the DAG files
    orchestration   benchmarks              task logic behind the DAGs and the demo; measurements
    serving                                 the retrieval service (and plain-text views of it)
    index_builder                           HNSW builds, the on-disk index format and its loader
    beam_jobs                               the embedding dataflows
    models                                  features, towers, training, export
    warehouse                               input tables
    artifacts                               the versioned store, the kinds every stage names
    config                                  EbrConfig

A module may import its own package and packages of lower layers, never a package of its
own layer or above: the demo reads no CLI formatting, the benchmarks import no CLI, the
index builder imports nothing of the service. Every import counts, also one inside a
function and `importlib.import_module("...")` with a literal name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Bottom first; packages on one line share a layer.
LAYERS = [
    ("config",),
    ("artifacts",),
    ("warehouse",),
    ("models",),
    ("beam_jobs",),
    ("index_builder",),
    ("serving",),
    ("orchestration", "benchmarks"),
    ("cli", "dags"),
]
LAYER_OF = {package: level for level, packages in enumerate(LAYERS) for package in packages}


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, dotted name) of every absolute import in a module, nested ones too."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def module_trees(folder: str):
    """(path relative to the repository, ast) of every module under `folder`, recorded
    benchmark results and figures aside."""
    for path in sorted((REPO / folder).rglob("*.py")):
        relative = path.relative_to(REPO)
        if not {"results", "figures"} & set(relative.parts):
            yield relative, ast.parse(path.read_text(), str(relative))


def layering_violations(package: str) -> list[str]:
    level = LAYER_OF[package]
    wrong = []
    for relative, tree in module_trees(package):
        for line, name in imported_modules(tree):
            top = name.split(".")[0]
            if top in LAYER_OF and top != package and LAYER_OF[top] >= level:
                wrong.append(f"{relative}:{line} imports {name} ({top} is not below {package})")
    return wrong


def test_every_package_of_the_repository_has_a_layer():
    """A new top-level folder of Python code must be placed in LAYERS (dags/ is no package)."""
    folders = {p.name for p in REPO.iterdir() if p.is_dir() and not p.name.startswith(".") and any(p.glob("*.py"))}
    assert folders - {"tests"} == set(LAYER_OF)


@pytest.mark.parametrize("package", sorted(LAYER_OF))
def test_no_module_imports_its_own_layer_or_above(package):
    assert layering_violations(package) == []


def test_the_check_sees_an_import_inside_a_function_and_by_name():
    tree = ast.parse(
        "import os\n"
        "def f():\n"
        "    from cli.serve_commands import format_versions\n"
        "    return importlib.import_module('benchmarks.report')\n"
    )
    assert imported_modules(tree) == [(1, "os"), (3, "cli.serve_commands"), (4, "benchmarks.report")]
