"""Every third-party module the packages import is a declared dependency of the install that runs it.

`core` and `registry` must work with the base install alone (the `train` extra alone once failed on an
undeclared `click`); `app` with the `serve` extra; `training` with the `train` extra.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"core", "app", "registry", "training"}
# Imported inside a function behind an ImportError that tells the user what to install.
OPTIONAL = {"registry": {"onnxruntime", "numpy", "boto3", "botocore"}}
EXTRAS = {"core": [], "registry": [], "app": ["serve"], "training": ["train"]}


def imported_top_levels(package: str) -> set[str]:
    names: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        if "migrations" in path.parts and path.name != "env.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - FIRST_PARTY - set(sys.stdlib_module_names) - {"__future__"}


def declared(extras: list[str]) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    names = {canonicalize_name(Requirement(line).name) for line in lines}
    if extras:  # an extra installs the base dependencies too, and what they bring in
        names |= declared([])
    return names


@pytest.mark.parametrize("package", sorted(EXTRAS))
def test_imports_are_declared_dependencies(package: str) -> None:
    allowed = declared(EXTRAS[package])
    distributions = packages_distributions()
    undeclared = {}
    for module in imported_top_levels(package) - OPTIONAL.get(package, set()):
        providers = {canonicalize_name(d) for d in distributions.get(module, [module])}
        if not providers & allowed:
            undeclared[module] = sorted(providers)
    assert undeclared == {}, f"{package} imports modules no dependency of its install declares"
