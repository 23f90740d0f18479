"""The arrows between kdzoo's layers point down, read from the source with ``ast``.

cli -> zoo / tune / report / demo / bench -> engine -> spec -> methods -> core, models, data,
functional; the teacher store (kdzoo.teachers) sits below the engine, which calls it. Every
import counts: ``import x``, ``from x import y``, relative ones, and those inside functions.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import kdzoo

PACKAGE = Path(kdzoo.__file__).resolve().parent

#: The modules (and packages: every module in them) below the engine.
BELOW_ENGINE = ("kdzoo.methods", "kdzoo.core", "kdzoo.models", "kdzoo.data", "kdzoo.functional",
                "kdzoo.spec", "kdzoo.config", "kdzoo.layers", "kdzoo.recipes", "kdzoo.teachers",
                "kdzoo.metrics", "kdzoo.environment", "kdzoo.errors", "kdzoo.io",
                "kdzoo.registry", "kdzoo.seeding", "kdzoo.version", "kdzoo.distributed")
#: What only the layers above the engine (and the package root) may import.
ABOVE_ENGINE = ("kdzoo.engine", "kdzoo.zoo", "kdzoo.tune", "kdzoo.report", "kdzoo.cli",
                "kdzoo.bench",
                "kdzoo.demo")

#: The CLI layer: the command line's package, and ``python -m kdzoo`` (which calls its main).
CLI_LAYER = ("kdzoo.cli", "kdzoo.__main__")

#: Modules outside the CLI layer that may import argparse, and why.
ARGPARSE_ALLOWED = {
    # RepDistiller/mdistiller checkpoints pickle their options as an argparse.Namespace: the
    # checkpoint reader allow-lists that class as plain data for safe (weights-only)
    # unpickling. It builds no parser (checked below).
    "kdzoo.models.checkpoint": "allow-lists argparse.Namespace for safe unpickling",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    """Whether ``name`` (kdzoo.x.y) is a module or package of the source tree."""
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: Path) -> set[str]:
    """The absolute names of every module that ``path`` imports, anywhere in it. ``from X import
    a`` imports X, and X.a when that is a module; ``from . import a`` of a name that is not a
    module imports the package itself."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            submodules = {f"{target}.{alias.name}" for alias in node.names
                          if is_module(f"{target}.{alias.name}")}
            found.update(submodules)
            if node.module is not None or len(submodules) < len(node.names):
                found.add(target)
    return found


def within(name: str, packages: tuple[str, ...] | str) -> bool:
    packages = (packages,) if isinstance(packages, str) else packages
    return any(name == p or name.startswith(p + ".") for p in packages)


SOURCES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
IMPORTS = {name: imports(path) for name, path in SOURCES.items()}


def offenders(modules, forbidden) -> dict[str, list[str]]:
    return {m: sorted(i for i in IMPORTS[m] if within(i, forbidden))
            for m in modules if any(within(i, forbidden) for i in IMPORTS[m])}


def test_the_reader_sees_every_kind_of_import():
    """Not vacuous: relative, absolute, function-level and package-relative imports resolve."""
    assert {"kdzoo.teachers", "kdzoo.environment", "kdzoo.models.features",
            "kdzoo.engine.cache"} <= IMPORTS["kdzoo.engine.build"]
    assert {"kdzoo.zoo.grid", "kdzoo.cli.run", "kdzoo.report.collect"} <= IMPORTS["kdzoo.cli.zoo"]
    assert "kdzoo.engine" in IMPORTS["kdzoo.zoo.runner"]  # inside a function
    assert "kdzoo.functional" in IMPORTS["kdzoo"]  # from . import functional
    assert "kdzoo.distributed" in IMPORTS["kdzoo.engine.trainer"]  # from .. import distributed
    assert "kdzoo" not in IMPORTS["kdzoo.engine.trainer"]
    assert "argparse" in IMPORTS["kdzoo.models.checkpoint"]
    assert len(SOURCES) > 100 and "kdzoo.cli" in SOURCES and "kdzoo.teachers" in SOURCES


def test_only_the_cli_layer_imports_the_cli_or_argparse():
    outside = [m for m in SOURCES if not within(m, CLI_LAYER)]
    assert "kdzoo.zoo.grid" in outside and "kdzoo.teachers" in outside
    assert offenders(outside, "kdzoo.cli") == {}
    assert offenders([m for m in outside if m not in ARGPARSE_ALLOWED], "argparse") == {}


@pytest.mark.parametrize("module", sorted(ARGPARSE_ALLOWED))
def test_argparse_outside_the_cli_builds_no_parser(module):
    """The allowed modules use argparse.Namespace only (plain data), never a parser."""
    tree = ast.parse(SOURCES[module].read_text("utf-8"))
    used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name) and node.value.id == "argparse"}
    named = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
             and node.module == "argparse" for alias in node.names}
    assert used | named == {"Namespace"}, ARGPARSE_ALLOWED[module]


def test_the_teacher_store_is_below_the_engine():
    """engine/build.py calls kdzoo.teachers.checkpoint_file, so the store imports neither the
    engine nor the package root (whose __init__ imports the engine)."""
    assert "kdzoo.teachers" in IMPORTS["kdzoo.engine.build"]
    store = IMPORTS["kdzoo.teachers"]
    assert not [i for i in store if within(i, "kdzoo.engine")]
    assert "kdzoo" not in store


def test_config_and_recipes_do_not_import_each_other():
    assert not [i for i in IMPORTS["kdzoo.config"] if within(i, "kdzoo.recipes")]
    assert not [i for i in IMPORTS["kdzoo.recipes"] if within(i, "kdzoo.config")]


def test_nothing_below_the_engine_imports_the_engine_or_above():
    below = [m for m in SOURCES if within(m, BELOW_ENGINE)]
    assert "kdzoo.methods.kd" in below and "kdzoo.metrics" in below
    assert offenders(below, ABOVE_ENGINE) == {}


def test_the_engine_does_not_import_its_callers():
    engine = [m for m in SOURCES if within(m, "kdzoo.engine")]
    assert offenders(engine, tuple(p for p in ABOVE_ENGINE if p != "kdzoo.engine")) == {}
