"""Finding runs and grouping them into the rows of a results table.

``kdzoo report`` and ``kdzoo plot`` take run folders, zoo folders (with ``zoo.json``, listing
every run of the grid, finished or not, and its published number) or any folder holding runs.
Runs whose settings are equal but for the seed form one row.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import changes_result
from ..layers import flatten
from ..engine.rundir import CONFIG, SUMMARY, read_summary, run_status
from ..errors import KdzooError

#: The file that marks a ``kdzoo tune`` folder (its runs to report are under final/).
TUNE_STATE = "tune.json"

@dataclass
class Run:
    """One run folder (or a grid's run that has none yet)."""

    path: Path
    name: str
    summary: dict[str, Any] | None
    config: dict[str, Any]
    published: dict[str, Any] | None = None
    label: str | None = None  # the grid entry's label (zoo.json), when it gave one

    @property
    def finished(self) -> bool:
        return bool(self.summary and self.summary.get("finished"))

    @property
    def status(self) -> str:
        """From the folder's own files: a grid's run that never started has a config only in
        the zoo's ``configs/``, and is "not started"."""
        return run_status(self.path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_config(folder: Path, fallback: Path | None = None) -> dict[str, Any]:
    for path in (folder / CONFIG, fallback):
        if path is not None and path.is_file():
            try:
                return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError:
                continue
    return {}


def _run(folder: Path, published: dict[str, Any] | None = None,
         config_file: Path | None = None, label: str | None = None) -> Run:
    return Run(folder, folder.name, read_summary(folder, missing_ok=True),
               _read_config(folder, config_file), published, label)


def collect(paths: list[str | Path]) -> list[Run]:
    """Every run under ``paths`` (run folders, zoo folders or folders of runs), each once."""
    found: dict[Path, Run] = {}
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise KdzooError(f"{path} is not a folder: pass run folders or zoo folders "
                             "(`kdzoo zoo --out DIR`)")
        zoo = _read_json(path / "zoo.json")
        if zoo is not None:
            for entry in zoo.get("runs", []):
                folder = path / entry["name"]
                found.setdefault(folder.resolve(), _run(folder, entry.get("published"),
                                                        Path(entry["config"]),
                                                        entry.get("label")))
        elif (path / TUNE_STATE).is_file():  # a tune folder: its final runs (not the trials)
            for summary in sorted((path / "final").rglob(SUMMARY)):
                found.setdefault(summary.parent.resolve(), _run(summary.parent))
        elif (path / SUMMARY).is_file() or (path / CONFIG).is_file():
            found.setdefault(path.resolve(), _run(path))
        else:
            for summary in sorted(path.rglob(SUMMARY)):
                found.setdefault(summary.parent.resolve(), _run(summary.parent))
    if not found:
        raise KdzooError(f"no kdzoo runs under {', '.join(map(str, paths))}: pass run folders "
                         "or a zoo folder")
    return list(found.values())


def settings_of(run: Run) -> dict[str, Any]:
    """The run's settings that make it a row of its own: every setting that can change a
    result (:func:`kdzoo.config.changes_result`) but the seed, which rows average over."""
    return {k: v for k, v in flatten(run.config).items()
            if changes_result(k) and k != "seed"}


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1; None for fewer than two values)."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


@dataclass
class Row:
    """Runs equal but for their seeds, and what the table says of them."""

    method: str
    teacher: str | None
    student: str
    data: str
    runs: list[Run]
    settings: dict[str, Any]
    differing: dict[str, Any] = field(default_factory=dict)  # settings unlike its siblings'
    label: str | None = None  # the grid's name for this variant of the method

    @property
    def tuned(self) -> dict[str, Any] | None:
        """What ``kdzoo tune`` recorded of the study that chose this row's settings."""
        return next((r.summary["tuned"] for r in self.runs
                     if r.summary and r.summary.get("tuned")), None)

    @property
    def shown(self) -> str:
        """The method as tables and plots name it: the grid's label, else the method; tuned
        rows say so."""
        return (self.label or self.method) + (" (tuned)" if self.tuned else "")

    def values(self, key: str) -> list[float]:
        return [r.summary[key] for r in self.runs if r.summary.get(key) is not None]  # type: ignore

    @property
    def selection(self) -> str:
        chosen = {r.summary.get("selection", "test") for r in self.runs}  # type: ignore
        return chosen.pop() if len(chosen) == 1 else "mixed"

    @property
    def published(self) -> dict[str, Any] | None:
        return next((r.published for r in self.runs if r.published), None)

    @property
    def seeds(self) -> list[int]:
        return sorted(r.summary["seed"] for r in self.runs)  # type: ignore[index]


def group_rows(runs: list[Run]) -> list[Row]:
    """The finished runs grouped by everything but the seed, in a stable order."""
    groups: dict[str, Row] = {}
    for run in runs:
        if not run.finished:
            continue
        settings = settings_of(run)
        key = json.dumps([run.label, settings], sort_keys=True, default=str)
        s = run.summary
        assert s is not None
        if key not in groups:
            groups[key] = Row(s["method"], s.get("teacher"), s["student"], s["data"], [],
                              settings, label=run.label)
        groups[key].runs.append(run)
    rows = sorted(groups.values(), key=lambda r: (r.data, r.student, r.teacher or "",
                                                  r.method != "baseline", r.shown))
    _mark_differences(rows)
    return rows


def _mark_differences(rows: list[Row]) -> None:
    """Each row's settings that differ among the rows of its method, pair and dataset (a
    sweep's hyper-parameters), so the table can tell them apart."""
    families: dict[tuple, list[Row]] = {}
    for row in rows:
        families.setdefault((row.shown, row.teacher, row.student, row.data), []).append(row)
    for family in families.values():
        if len(family) < 2:
            continue
        keys = set().union(*(r.settings for r in family))
        varying = sorted(k for k in keys if len({json.dumps(r.settings.get(k), default=str)
                                                  for r in family}) > 1)
        for row in family:
            row.differing = {k: row.settings.get(k) for k in varying}


def baseline_of(row: Row, rows: list[Row]) -> Row | None:
    """The baseline row of ``row``'s student and dataset (the one whose training settings are
    closest: the fewest differing keys outside method and teacher)."""
    if row.method == "baseline":
        return None
    candidates = [r for r in rows if r.method == "baseline" and r.student == row.student
                  and r.data == row.data]

    def distance(other: Row) -> int:
        mine = {k: v for k, v in row.settings.items()
                if not k.startswith(("method.", "teacher."))}
        theirs = {k: v for k, v in other.settings.items()
                  if not k.startswith(("method.", "teacher."))}
        return sum(mine.get(k) != theirs.get(k) for k in set(mine) | set(theirs))

    return min(candidates, key=distance) if candidates else None
