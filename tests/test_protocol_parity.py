"""Protocol parity: every cell of every shipped grid runs the settings its authors ran.

``tests/data/parity/*.yaml`` transcribe, per method and CIFAR-100 pair, what the authors'
repositories run (weights, temperatures, warm-up, epochs, learning rate, batch, weight decay,
Nesterov, padding ...), each row with its source (``owner/repo@commit:path``, or ``paper:``
for a number only a paper gives). A row::

    - cells: {grid: field-2026, label: [kd, kd+dot], teacher: resnet32x4, student: resnet8x4}
      expect: {method.weight: 0.9, method.temperature: 4.0, optim.epochs: 240}
      source: "megvii-research/mdistiller@a08d46f:configs/cifar100/kd.yaml"
      differs: {optim.nesterov: some-difference-id}   # optional

``cells`` selects grid cells (keys ``grid``, ``label`` (the grid's label, else the method),
``method``, ``teacher``, ``student``, ``data``, ``role`` ("teacher": a teacher the grid trains;
"run"); a list matches any of its values; absent keys match everything). ``expect`` holds
config keys as in config.yaml, plus ``optim.lr_drops``, the epochs after which the learning
rate drops. Rows are read file by file in name order; a later row's value for a key replaces an
earlier one's for the cells both select (as recipes do). ``differs`` names the keys where kdzoo
deliberately runs another value, each with the id of its entry in ``kdzoo.differences``
(``docs/differences.md``).

The test resolves every cell's config as ``kdzoo zoo`` would and compares each transcribed key
with the effective value; every cell must be covered for the protocol keys below.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from kdzoo.core.schedule import absolute_milestones
from kdzoo.differences import SOURCE, load_differences, render_markdown
from kdzoo.layers import flatten
from kdzoo.zoo import expand, load_grid_spec, packaged_grids

ROWS = Path(__file__).parent / "data" / "parity"
CELL_KEYS = {"grid", "label", "method", "teacher", "student", "data", "role"}
#: What every cell's rows must transcribe: the protocol of a CIFAR-100 result.
PROTOCOL = ("optim.epochs", "optim.lr", "optim.lr_drops", "optim.batch_size",
            "optim.weight_decay", "optim.momentum", "optim.nesterov", "data.padding_mode")


@dataclass(frozen=True)
class Row:
    path: str
    cells: dict[str, Any]
    expect: dict[str, Any]
    differs: dict[str, str]
    source: str


@dataclass(frozen=True)
class Cell:
    grid: str
    label: str
    method: str
    teacher: str | None
    student: str
    data: str
    role: str
    settings: dict[str, Any]

    @property
    def name(self) -> str:
        pair = f"{self.teacher} -> {self.student}" if self.teacher else self.student
        return f"{self.grid}: {self.label} {pair} {self.data}"


@lru_cache(maxsize=1)
def rows() -> tuple[Row, ...]:
    found = []
    for path in sorted(ROWS.glob("*.yaml")):
        for entry in yaml.safe_load(path.read_text()) or []:
            found.append(Row(path.name, entry.get("cells") or {}, entry.get("expect") or {},
                             entry.get("differs") or {}, entry.get("source", "")))
    return tuple(found)


@lru_cache(maxsize=None)
def cells(grid: str) -> tuple[Cell, ...]:
    found = []
    for run in expand(load_grid_spec(grid), Path("/nonexistent") / grid):
        settings = flatten(run.config.to_dict())
        settings["optim.lr_drops"] = list(absolute_milestones(
            list(run.config.optim.milestones), run.config.optim.epochs)) \
            if run.config.optim.schedule == "multistep" else None
        teacher = run.config.teacher.name if run.teacher else None
        found.append(Cell(grid, run.label or run.method, run.method, teacher, run.student,
                          run.data, run.role, settings))
    return tuple(found)


def selects(row: Row, cell: Cell) -> bool:
    for key, wanted in row.cells.items():
        value = getattr(cell, key)
        if value not in (wanted if isinstance(wanted, list) else [wanted]):
            return False
    return True


def transcribed(cell: Cell) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """The cell's authors' settings, the differences kdzoo declares, each key's source."""
    expect: dict[str, Any] = {}
    differs: dict[str, str] = {}
    sources: dict[str, str] = {}
    for row in rows():
        if selects(row, cell):
            for key, value in row.expect.items():
                expect[key], sources[key] = value, row.source
                differs.pop(key, None)
            differs.update(row.differs)
    return expect, differs, sources


def same(found: Any, wanted: Any) -> bool:
    if isinstance(wanted, float) or isinstance(found, float):
        try:
            return found is not None and abs(float(found) - float(wanted)) <= 1e-12 * max(
                1.0, abs(float(wanted)))
        except (TypeError, ValueError):
            return False
    if isinstance(wanted, (list, tuple)) and isinstance(found, (list, tuple)):
        return len(wanted) == len(found) and all(same(a, b) for a, b in zip(found, wanted,
                                                                            strict=True))
    return found == wanted


def test_every_row_is_well_formed():
    ids = {d.id for d in load_differences()}
    assert rows(), "no parity rows"
    for row in rows():
        where = f"{row.path}: {row.cells}"
        assert set(row.cells) <= CELL_KEYS, where
        assert row.expect or row.differs, where
        assert SOURCE.search(row.source) or row.source.startswith("paper:"), where
        assert set(row.differs.values()) <= ids, (where, set(row.differs.values()) - ids)
        for key in row.cells.get("grid", []) if isinstance(row.cells.get("grid"), list) else \
                [row.cells.get("grid")] if row.cells.get("grid") else []:
            assert key in packaged_grids(), where


@pytest.mark.parametrize("grid", packaged_grids())
def test_every_cell_runs_what_its_authors_ran(grid):
    problems = []
    for cell in cells(grid):
        expect, differs, sources = transcribed(cell)
        missing = [k for k in PROTOCOL if k not in expect]
        if missing:
            problems.append(f"{cell.name}: no row transcribes {', '.join(missing)}")
        if cell.method != "baseline" and not any(k.startswith("method.") for k in expect):
            problems.append(f"{cell.name}: no row transcribes the method's settings")
        for key, wanted in expect.items():
            if key not in cell.settings:
                problems.append(f"{cell.name}: {key} is not a setting ({sources[key]})")
                continue
            found = cell.settings[key]
            if key in differs:
                if same(found, wanted):
                    problems.append(f"{cell.name}: {key} = {found!r} equals the authors' value, "
                                    f"but {differs[key]} says it differs")
            elif not same(found, wanted):
                problems.append(f"{cell.name}: {key} = {found!r}, the authors ran {wanted!r} "
                                f"({sources[key]})")
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:60])


def test_every_row_selects_a_cell():
    every = [cell for grid in packaged_grids() for cell in cells(grid)]
    unused = [f"{row.path}: {row.cells}" for row in rows()
              if not any(selects(row, cell) for cell in every)]
    assert not unused, "rows that select no cell:\n" + "\n".join(unused)


def test_every_difference_names_the_authors_file_and_is_documented():
    repo = Path(__file__).parent.parent
    for entry in load_differences():
        assert SOURCE.search(entry.authors), entry.id
        assert entry.differs and entry.why, entry.id
        assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", entry.id), entry.id
    assert len({d.id for d in load_differences()}) == len(load_differences())
    written = (repo / "docs" / "differences.md").read_text()
    assert written == render_markdown() + "\n", \
        "docs/differences.md is stale: kdzoo list methods --differences > docs/differences.md"


def test_every_recipe_preset_and_published_number_names_its_source():
    """Each setting the authors published is traced to their commit (``owner/repo@commit:path``)
    or to a paper (``paper: title, table``), so a number that moves upstream is caught."""
    from kdzoo.layers import list_presets, load_preset
    from kdzoo.recipes import load_recipes

    def traced(source: str) -> bool:
        return bool(SOURCE.search(source)) or source.startswith("paper:")

    untraced = [f"recipe {r.name}: {r.source}" for r in load_recipes() if not traced(r.source)]
    untraced += [f"preset {name}" for name in list_presets()
                 if not traced(load_preset(name)["source"])]
    for grid in packaged_grids():
        for entry in load_grid_spec(grid).get("published") or []:
            if not traced(entry.get("source", "")):
                untraced.append(f"{grid}: {entry['method']} {entry.get('teacher')} -> "
                                f"{entry['student']}: {entry.get('source')}")
    assert not untraced, f"{len(untraced)} untraced:\n" + "\n".join(untraced[:40])
