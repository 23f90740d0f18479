"""Tuning a whole grid at equal budget: ``kdzoo zoo --tune-trials K`` (or a ``tune:`` section in
the grid file).

Every method of the grid is tuned on every (pair, dataset) of the grid with the same number of
trials and the same trial epochs, on the validation split (which the grid must hold out), from
its default space (``kdzoo list methods --search-space``); a method without one (the baseline)
runs untuned. The teachers the grid trains are trained first. Then the grid's runs (all its
seeds) train with each method's best settings and record the study (``tuned`` in config.yaml and
summary.json), so ``kdzoo report`` marks them. The studies live in ``<zoo>/tune/<cell>/``; a
rerun continues them, as it continues the runs::

    tune:
      trials: 20          # per method, pair and dataset
      trial_epochs: 60    # default: the runs' epochs
      pruner: median      # median, hyperband, successive-halving, none
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from ..errors import ConfigError, KdzooError
from ..layers import deep_merge, nest
from ..zoo.grid import Grid, RunPlan, expand
from ..zoo.runner import failure_lines, run_grid
from .search import RunLayers, TuneSettings, trial_epochs, tuned_record
from .space import build_space, default_space
from .study import PRUNERS, default_storage
from . import tune  # the package's entry point (kdzoo.tune.tune)

log = logging.getLogger("kdzoo")

TUNE_KEYS = {"trials", "trial_epochs", "pruner"}


def tune_section(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The grid's ``tune:`` section, checked (None when the grid is not tuned)."""
    section = spec.get("tune")
    if section is None:
        return None
    if not isinstance(section, dict) or set(section) - TUNE_KEYS:
        raise ConfigError(f"grid tune: a mapping with keys {', '.join(sorted(TUNE_KEYS))}, got "
                          f"{section!r}")
    trials = section.get("trials")
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise ConfigError(f"grid tune.trials must be a positive integer, got {trials!r}")
    epochs = section.get("trial_epochs")
    if epochs is not None and (not isinstance(epochs, int) or epochs < 1):
        raise ConfigError(f"grid tune.trial_epochs must be a positive integer, got {epochs!r}")
    if section.get("pruner", "median") not in PRUNERS:
        raise ConfigError(f"grid tune.pruner must be one of {', '.join(PRUNERS)}, got "
                          f"{section.get('pruner')!r}")
    return section


def _cell(run: RunPlan) -> str:
    teacher = f"{run.teacher.replace('/', '_')}-" if run.teacher else ""
    return f"{run.label or run.method}-{teacher}{run.student.replace('/', '_')}-{run.data}"


def _layers(run: RunPlan) -> RunLayers:
    """The run's resolved settings as the layer a study's trials start from."""
    settings = run.config.to_dict()
    for key in ("out", "seed", "tuned"):
        settings.pop(key, None)
    return RunLayers(overrides=settings)


def tune_cells(grid: Grid, section: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Tune each (method entry, pair, dataset) cell of ``grid`` that has a space; returns
    ``{cell: {"params": {...}, "tuned": record}}``."""
    first_seed: dict[str, RunPlan] = {}
    for run in grid.runs:
        if run.role == "run" and default_space(run.method):
            first_seed.setdefault(_cell(run), run)
    for cell, run in first_seed.items():
        if run.config.data.val_split == 0:
            raise ConfigError("a tuned grid searches on the validation split: give the grid "
                              "one (--val-split 0.1, or settings: {data: {val_split: 0.1}})")
    found: dict[str, dict[str, Any]] = {}
    for cell, run in first_seed.items():
        settings = TuneSettings(run=_layers(run), space=build_space(run.config),
                                out=grid.root / "tune" / cell, n_trials=section["trials"],
                                trial_epochs=section.get("trial_epochs"),
                                pruner=section.get("pruner", "median"), final_seeds=0)
        log.info("tuning %s: %d trials", cell, settings.n_trials)
        result = tune(settings)
        if result.best is None:
            raise KdzooError(f"tuning {cell}: no trial completed; use more trials or "
                             "pruner: none")
        storage = default_storage(settings.out)
        found[cell] = {"params": dict(result.best.params),
                       "tuned": tuned_record(result.study, storage, settings.space, result.best,
                                             trial_epochs(settings, run.config))}
    return found


def tuned_spec(spec: dict[str, Any], grid: Grid, tuned: dict[str, dict[str, Any]]
               ) -> dict[str, Any]:
    """``spec`` with each tuned cell's settings: a method entry per tuned (entry, pair), its
    per-dataset settings carrying the study's best values and its record."""
    spec = copy.deepcopy(spec)
    entries = []
    for item in spec.get("methods") or []:
        item = {"name": item} if isinstance(item, str) else dict(item)
        cells = {}
        for run in grid.runs:
            if run.role == "run" and run.method == item["name"] and \
                    run.label == item.get("label") and _cell(run) in tuned:
                cells.setdefault((run.teacher, run.student), {})[run.data] = tuned[_cell(run)]
        if not cells:
            entries.append(item)
            continue
        for (teacher, student), per_data in cells.items():
            entry = dict(item, pairs=[{"teacher": teacher, "student": student}])
            data_settings = copy.deepcopy(item.get("data_settings") or {})
            for data, found in per_data.items():
                data_settings[data] = deep_merge(data_settings.get(data) or {}, deep_merge(
                    nest(found["params"]), {"tuned": found["tuned"]}))
            entry["data_settings"] = data_settings
            entries.append(entry)
    spec["methods"] = entries
    return spec


def tune_grid(spec: dict[str, Any], root: str | Path, jobs: int = 1) -> Grid:
    """Train the grid's teachers, tune its cells, and return the grid of tuned runs."""
    section = tune_section(spec)
    assert section is not None
    grid = expand(spec, root)
    teachers = Grid(grid.root, [r for r in grid.runs if r.role == "teacher"], spec)
    if teachers.runs:
        failures = failure_lines(run_grid(teachers, jobs=jobs))
        if failures:
            raise KdzooError(f"a teacher of the grid failed, so nothing was tuned: {failures[0]}")
    return expand(tuned_spec(spec, grid, tune_cells(grid, section)), root)
