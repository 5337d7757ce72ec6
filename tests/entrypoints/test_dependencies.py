"""What the entry points import at run time is declared in pyproject.toml, codecs of libraries included.

``campaigns live`` crashed on the pipeline's first real record because aiokafka decompresses lz4 only with an
optional package nobody declared; these checks read the installed distribution's own metadata (what ``pip
install`` of the project pulls in), not the development venv's extras.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.entrypoints.conftest import REPO_ROOT

# The project's own packages as pyproject.toml ships them (`[tool.setuptools.packages.find] include`, so a new
# package is covered without editing this file), and migrations/ (run by `campaigns migrate`); `bench` has its
# own extra.
_PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
OWN = {p.rstrip("*") for p in _PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]} | {"migrations"}
SHIPPED = tuple(sorted(p for p in OWN - {"bench"} if (REPO_ROOT / p).is_dir()))


def _imports(package: str) -> dict[str, set[str]]:
    """Top-level module -> files that import it (absolute imports, at any depth: lazy imports count)."""
    found: dict[str, set[str]] = {}
    for path in (REPO_ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(REPO_ROOT)))
    return found


@cache
def _closure(extras: frozenset[str]) -> frozenset[str]:
    """Normalised names of every distribution that installing ``campaigns[extras]`` brings, transitively
    (a dependency's own extras too, e.g. ``aiokafka[lz4]``)."""
    names: set[str] = set()
    expanded: set[tuple[str, str]] = set()  # (distribution, extra or "") whose requirements were followed
    todo = [("campaigns", extra) for extra in ("", *extras)]
    while todo:
        dist, extra = todo.pop()
        if (dist, extra) in expanded:
            continue
        expanded.add((dist, extra))
        try:
            requires = metadata.requires(dist) or []
        except metadata.PackageNotFoundError:  # declared but not installed here (e.g. the bench extra)
            continue
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
                continue
            if not requirement.marker and extra:
                continue  # unconditional requirements are followed once, with extra ""
            names.add(_normal(requirement.name))
            todo += [(requirement.name, e) for e in ("", *requirement.extras)]
    return frozenset(names)


def _normal(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


@pytest.mark.parametrize(("packages", "extras"), [(SHIPPED, frozenset()), (("bench",), frozenset({"bench"}))])
def test_every_import_of_the_code_comes_from_a_declared_dependency(packages, extras):
    declared = _closure(extras)
    providers = metadata.packages_distributions()
    missing = {}
    for package in packages:
        for module, files in _imports(package).items():
            if module in OWN or module in sys.stdlib_module_names or module == "__future__":
                continue
            # A module not installed here (e.g. the bench extra's) is checked by its own name.
            dists = {_normal(d) for d in providers.get(module, [module])}
            if not dists & declared:
                missing[module] = sorted(files)[:3]
    assert not missing, f"imported but not declared in pyproject.toml (extras {sorted(extras)}): {missing}"


def test_aiokafka_reads_what_the_pipeline_produces():
    """The producers compress (lz4); aiokafka (the live view's consumer) needs its codec extra to read that."""
    from aiokafka import codec

    used = {m for path in (REPO_ROOT / "producers").rglob("*.py")
            for m in re.findall(r'"compression\.type":\s*"(\w+)"', path.read_text())}
    assert used, "no producer sets compression.type any more: update this check"
    unreadable = {name for name in used if name != "none" and not getattr(codec, f"has_{name}")()}
    assert not unreadable, f"aiokafka cannot decompress {unreadable} here"
    # ... and not only in this venv: the optional modules aiokafka's codecs import are declared dependencies.
    optional = {node.names[0].name.split(".")[0] for node in ast.walk(ast.parse(Path(codec.__file__).read_text()))
                if isinstance(node, ast.Try) for node in node.body if isinstance(node, ast.Import)}
    assert optional, "aiokafka.codec no longer imports its codecs in try blocks: update this check"
    undeclared = {m for m in optional if _normal(m) not in _closure(frozenset())}
    assert not undeclared, f"aiokafka codec modules not declared (aiokafka[lz4] in pyproject.toml): {undeclared}"
