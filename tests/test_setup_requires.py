"""setup.py names what the code imports, at the versions requirements.lock pins.

Read from the imports themselves (ast over every module, nested imports and
`importlib.import_module("...")` with a literal name too): a third-party import in an
installed package must come from a distribution in `install_requires`; one in tests/,
benchmarks/ or dags/ from `install_requires` or the `test` extra. So a new import that
only arrives through Airflow's dependencies fails here instead of on a clean install.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

from tests.test_layering import LAYER_OF, imported_modules, module_trees

REPO = Path(__file__).resolve().parents[1]
CHECKED_ONLY_WITH_TEST_EXTRA = ("tests", "benchmarks", "dags")


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def setup_arguments() -> dict:
    """The literal keyword arguments of setup.py's setup() call, and its PACKAGES."""
    tree = ast.parse((REPO / "setup.py").read_text())
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["PACKAGES"]:
            found["packages"] = ast.literal_eval(node.value)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup":
            for keyword in node.keywords:
                if keyword.arg in ("install_requires", "extras_require"):
                    found[keyword.arg] = ast.literal_eval(keyword.value)
    return found


def pins(requirements: list[str]) -> dict[str, str]:
    """{"apache-beam": "2.77.0", ...} from ["apache-beam[gcp]==2.77.0", ...]."""
    pinned = {}
    for requirement in requirements:
        name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?==(\S+)", requirement).groups()
        pinned[normalized(name)] = version
    return pinned


def third_party_imports(folder: str) -> dict[str, set[str]]:
    """Top-level module -> the files importing it, for the third-party imports under `folder`."""
    found: dict[str, set[str]] = {}
    for relative, tree in module_trees(folder):
        for _, name in imported_modules(tree):
            top = name.split(".")[0]
            if top in LAYER_OF or top in ("tests", "__future__") or top in sys.stdlib_module_names:
                continue
            found.setdefault(top, set()).add(str(relative))
    return found


def unlisted(folders, allowed: set[str]) -> list[str]:
    providers = {m: {normalized(d) for d in ds} for m, ds in importlib.metadata.packages_distributions().items()}
    missing = []
    for folder in folders:
        for module, files in sorted(third_party_imports(folder).items()):
            if not providers.get(module, set()) & allowed:
                where = ", ".join(sorted(files)[:3])
                missing.append(
                    f"{module} (from {sorted(providers.get(module, {'no installed distribution'}))}) in {where}"
                )
    return missing


def test_every_pin_is_the_version_requirements_lock_pins():
    arguments = setup_arguments()
    lock = pins(
        [line.split(";")[0].strip() for line in (REPO / "requirements.lock").read_text().splitlines() if "==" in line]
    )
    wanted = pins(arguments["install_requires"]) | pins(arguments["extras_require"]["test"])
    assert {name: (version, lock.get(name)) for name, version in wanted.items() if lock.get(name) != version} == {}


def test_the_installed_packages_import_only_what_install_requires_names():
    arguments = setup_arguments()
    assert unlisted(arguments["packages"], set(pins(arguments["install_requires"]))) == []


def test_tests_benchmarks_and_dags_import_only_what_setup_names_with_the_test_extra():
    arguments = setup_arguments()
    allowed = set(pins(arguments["install_requires"])) | set(pins(arguments["extras_require"]["test"]))
    assert unlisted(CHECKED_ONLY_WITH_TEST_EXTRA, allowed) == []


def test_the_check_sees_a_missing_requirement():
    """The two checks above can fail: without fastapi the service's imports are unlisted."""
    arguments = setup_arguments()
    without = set(pins(arguments["install_requires"])) - {"fastapi"}
    assert any(line.startswith("fastapi ") and "serving/" in line for line in unlisted(["serving"], without))
