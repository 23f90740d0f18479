"""A grid of runs: methods x (teacher, student) pairs x datasets x seeds, from flags or YAML.

A grid file (``kdzoo zoo --grid grid.yaml``; the packaged grids are ``kdzoo list grids``)::

    data: cifar100                # a dataset, or a list of them
    seeds: 3                      # seeds 0, 1, 2; or a list such as [0, 5, 7]
    preset: repdistiller          # optional
    settings:                     # any `kdzoo train` config keys, for every run
      optim: {epochs: 240}
      data: {data_dir: ./datasets}
    teacher_settings:             # extra keys for the teachers the grid trains (optional)
      optim: {epochs: 240}
    pairs:                        # (teacher, student) pairs
      - {teacher: resnet110, student: resnet20}
      - {teacher: resnet32x4, student: resnet8x4}
    teachers:                     # teachers given as checkpoints instead of trained (optional);
      resnet32x4: teachers:resnet32x4/cifar100   # per dataset: {cifar100: FILE, ...}
    methods:                      # names, or mappings with the method's own settings
      - baseline
      - st
      - {name: crd, settings: {method: {weight: 0.2}},
         data_settings: {cifar100: {method: {weight: 0.8}}}}   # per dataset, on top
      - {name: crd, label: crd+kd, settings: {loss: {kd: 1}}}  # a second variant, named
      - {name: kdsvd, pairs: [{teacher: resnet32x4, student: resnet8x4}]}  # on these pairs only
    published:                    # published numbers, shown by `kdzoo report` (optional)
      - {method: crd, teacher: resnet110, student: resnet20, data: cifar100, top1: 71.46,
         metric: last, source: "RepDistiller README"}
    cells: all                    # or "published": only the runs that have a published number
    tune: {trials: 20}            # tune every method first, at equal budget (kdzoo.tune.grid)

Every teacher the grid does not get as a checkpoint is a run of the grid too (the ``baseline``
method with the teacher as student, seed ``teacher_seed``, default 0), trained once and reused
by every method and seed. ``baseline`` runs (no teacher) are one per student, dataset and seed,
whatever the pairs; mutual learning (``dml``) trains its peer from scratch.

A ``label`` names a method entry in run folders, tables and ``published`` entries, so one method
can appear twice (RepDistiller's CRD and CRD+KD rows) and each variant meets its own number.

Every run is a folder under the zoo folder named from its method, pair, dataset and seed, plus
a short hash of its other non-default settings (so sweeps never collide); its full config is
written to ``<zoo>/configs/<name>.yaml``, the file ``kdzoo train --config`` runs.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..errors import ConfigError
from ..layers import deep_merge, load_yaml_file
from ..methods import METHODS, method_defaults
from ..registry import did_you_mean
from ..spec import default_settings, resolve_config

GRID_KEYS = {"data", "seeds", "preset", "settings", "teacher_settings", "teacher_seed",
             "pairs", "teachers", "methods", "published", "description", "cells", "tune"}
#: Settings a run folder's name says already (method, pair, dataset, seed; the teacher's
#: checkpoint through its teacher id): the hash covers the other settings of the result.
NAMED_KEYS = frozenset({"method.name", "teacher.name", "teacher.checkpoint", "teacher.untrained",
                        "student.name", "data.name", "seed"})


@dataclass
class RunPlan:
    """One run of the grid."""

    name: str                      # its folder name under the zoo folder
    role: str                      # "teacher" (a teacher the grid trains) or "run"
    method: str
    teacher: str | None
    student: str
    data: str
    seed: int
    config: TrainConfig            # resolved, with ``out`` set
    needs: list[str] = field(default_factory=list)  # names of teacher runs it distils from
    published: dict[str, Any] | None = None
    label: str | None = None       # the grid entry's label, when it gives one


@dataclass
class Grid:
    """The expanded grid: its runs in dependency order (teachers first)."""

    root: Path
    runs: list[RunPlan]
    spec: dict[str, Any]

    def __iter__(self):  # noqa: ANN204
        return iter(self.runs)


# ------------------------------------------------------------------------------ the spec
def packaged_grids() -> list[str]:
    folder = resources.files("kdzoo") / "configs" / "grids"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_grid_spec(path_or_name: str | Path) -> dict[str, Any]:
    """A grid file, or the name of a packaged grid (``kdzoo list grids``)."""
    path = Path(path_or_name)
    if not path.exists() and str(path_or_name) in packaged_grids():
        path = Path(str(resources.files("kdzoo") / "configs" / "grids" / f"{path_or_name}.yaml"))
    elif not path.exists():
        hint = did_you_mean(str(path_or_name), packaged_grids())
        raise ConfigError(f"grid {path_or_name} is neither a file nor a packaged grid{hint}; "
                          f"packaged grids: {', '.join(packaged_grids())}")
    spec = load_yaml_file(path)
    unknown = sorted(set(spec) - GRID_KEYS)
    if unknown:
        raise ConfigError(f"grid {path}: unknown key '{unknown[0]}'"
                          f"{did_you_mean(unknown[0], sorted(GRID_KEYS))}; grid keys: "
                          f"{', '.join(sorted(GRID_KEYS))}")
    return spec


def _as_list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _seeds(value: Any) -> list[int]:
    if value is None:
        return [0]
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ConfigError(f"grid seeds must be a positive count or a list, got {value}")
        return list(range(value))
    seeds = _as_list(value, "seeds")
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"grid seeds must be a positive count or a list of integers, got "
                          f"{value!r}")
    return seeds


MethodEntry = tuple[str, "str | None", dict[str, Any], "set[tuple[str | None, str]] | None"]


def _methods(value: Any) -> list[MethodEntry]:
    """(name, label, settings per dataset ("" for every dataset), the pairs it runs on (None:
    every pair of the grid)) per method; ``all`` is every registered method."""
    found: list[MethodEntry] = []
    for item in _as_list(value, "methods"):
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or \
                set(item) - {"name", "label", "settings", "data_settings", "pairs"}:
            raise ConfigError(f"grid methods: each entry is a name or {{name: ..., label: ..., "
                              f"settings: ..., data_settings: {{DATA: ...}}, pairs: [...]}}, "
                              f"got {item!r}")
        name, label = item["name"], item.get("label")
        if name == "all":
            found += [(m, None, {"": {}}, None) for m in METHODS.names()]
            continue
        METHODS.get(name)  # a one-line error with "did you mean" for a misspelled name
        if label is not None and not (isinstance(label, str) and
                                      re.fullmatch(r"[A-Za-z0-9_.+]+", label)):
            raise ConfigError(f"grid methods: label {label!r} of {name} must be letters, digits "
                              "and _ . + (it names run folders)")
        only = None if item.get("pairs") is None else set(_pairs(item["pairs"]))
        found.append((name, label, {"": item.get("settings") or {},
                                    **(item.get("data_settings") or {})}, only))
    if not found:
        raise ConfigError("the grid names no method: pass --methods (or methods: in the grid)")
    return found


def _pairs(value: Any) -> list[tuple[str | None, str]]:
    pairs = []
    for item in _as_list(value, "pairs"):
        if not isinstance(item, dict) or "student" not in item:
            raise ConfigError(f"grid pairs: each entry is {{teacher: NAME, student: NAME}}, got "
                              f"{item!r}")
        pairs.append((item.get("teacher"), item["student"]))
    if not pairs:
        raise ConfigError("the grid names no student: pass --student (and --teacher), or pairs: "
                          "in the grid")
    return pairs


# ------------------------------------------------------------------------------- naming
def settings_hash(config: TrainConfig, teacher_id: str | None = None) -> str:
    """A short hash of the result settings (:func:`kdzoo.config.changes_result`) in which
    ``config`` differs from a plain run of its method on its student and dataset (its preset's
    values, optimiser, hyper-parameters, options ... and ``teacher_id``, which names a teacher
    other than the grid's default one), '' when there are none. Settings that cannot change a
    result (where the data lives, the device, threads, logging) never change the name."""
    plain = default_settings(config.method.name, config.student.name, config.data.name)
    mine = config.result_settings()
    diff = {k: mine.get(k) for k in sorted(set(mine) | set(plain))
            if k not in NAMED_KEYS and mine.get(k) != plain.get(k)}
    if teacher_id is not None:
        diff["teacher"] = teacher_id
    if not diff:
        return ""
    return hashlib.sha256(json.dumps(diff, sort_keys=True, default=str).encode()).hexdigest()[:8]


def run_name(method: str, teacher: str | None, student: str, data: str, seed: int,
             config: TrainConfig, teacher_id: str | None = None) -> str:
    parts = [method] + ([teacher] if teacher else []) + [student, data, f"s{seed}"]
    name = "-".join(p.replace("/", "_") for p in parts)
    digest = settings_hash(config, teacher_id)
    return f"{name}-{digest}" if digest else name


# ------------------------------------------------------------------------------ expanding
def expand(spec: dict[str, Any], root: str | Path) -> Grid:
    """The runs of grid ``spec`` under the zoo folder ``root``, teachers first."""
    root = Path(root)
    datasets = _as_list(spec.get("data"), "data")
    if not datasets:
        raise ConfigError("the grid names no dataset: pass --data (or data: in the grid)")
    seeds, methods, pairs = _seeds(spec.get("seeds")), _methods(spec.get("methods")), \
        _pairs(spec.get("pairs"))
    base = copy.deepcopy(spec.get("settings") or {})
    if spec.get("preset") is not None:
        base["preset"] = spec["preset"]
    # Hyper-parameters set for the whole grid go to the methods that have them.
    shared_params = base.pop("method", None) or {}
    unused = set(shared_params)
    cells = spec.get("cells", "all")
    if cells not in ("all", "published"):
        raise ConfigError(f"grid cells must be 'all' or 'published', got {cells!r}")
    given = spec.get("teachers") or {}
    teacher_seed = int(spec.get("teacher_seed", 0))
    runs: dict[str, RunPlan] = {}

    def plan(role: str, method: str, teacher: str | None, student: str, data: str, seed: int,
             overrides: dict[str, Any], needs: list[str], teacher_id: str | None = None,
             label: str | None = None) -> RunPlan:
        known = method_defaults(method)
        params = {k: v for k, v in shared_params.items() if k in known}
        unused.difference_update(params)
        layered = deep_merge(deep_merge(base, {"method": params}), overrides)
        layered = deep_merge(layered, {"method": {"name": method}, "student": {"name": student},
                                       "data": {"name": data}, "seed": seed})
        config = resolve_config(overrides=layered)
        name = run_name(label or method, teacher, student, data, seed, config, teacher_id)
        config = dataclasses.replace(config, out=str(root / name))
        found = runs.setdefault(name, RunPlan(name, role, method, teacher, student, data, seed,
                                              config, needs, label=label))
        if role == "teacher":  # also a run of its own (a baseline): it must come first
            found.role = "teacher"
        return found

    def teacher_source(teacher: str, data: str) -> tuple[str | None, list[str], str | None]:
        """The teacher's checkpoint, the teacher runs it needs, and its identity in the names
        of the runs distilling from it (None for the grid's default teacher run)."""
        entry = given.get(teacher)
        if isinstance(entry, dict):
            entry = entry.get(data)
        if entry is not None:
            return str(entry), [], str(entry)
        if (base.get("teacher") or {}).get("untrained"):  # smoke grids: no teacher to train
            return None, [], None
        overrides = deep_merge(spec.get("teacher_settings") or {}, {})
        run = plan("teacher", "baseline", None, teacher, data, teacher_seed, overrides, [])
        default = run.name == f"baseline-{teacher.replace('/', '_')}-{data}-s0"
        return str(Path(run.config.out) / "student.pt"), [run.name], \
            None if default else run.name

    for data in datasets:
        for teacher, student in pairs:
            for method, label, settings, only in methods:
                if only is not None and (teacher, student) not in only:
                    continue  # the authors configured the method for other pairs only
                roles = METHODS.get(method).roles
                uses_teacher = any(r.source == "teacher" for r in roles)
                frozen = any(r.source == "teacher" and not r.trainable for r in roles)
                if uses_teacher and teacher is None:
                    raise ConfigError(f"method {method} needs a teacher: give the pair a "
                                      "teacher (--teacher NAME)")
                shown = teacher if uses_teacher else None
                published = _published(spec, label or method, shown, student, data)
                if cells == "published" and published is None:
                    continue
                for seed in seeds:
                    overrides = deep_merge(settings[""], settings.get(data) or {})
                    needs: list[str] = []
                    teacher_id = None
                    if frozen:
                        checkpoint, needs, teacher_id = teacher_source(teacher, data)
                        overrides = deep_merge(overrides, {"teacher": {
                            "name": teacher, "checkpoint": checkpoint}})
                    elif uses_teacher:  # a peer trained from scratch (DML)
                        overrides = deep_merge(overrides, {"teacher": {"name": teacher}})
                    run = plan("run", method, shown, student, data, seed, overrides, needs,
                               teacher_id, label)
                    run.published = published
    if unused:
        raise ConfigError(f"no method of the grid has the hyper-parameter "
                          f"'{sorted(unused)[0]}': check --set method.{sorted(unused)[0]}")
    ordered = sorted(runs.values(), key=lambda r: r.role != "teacher")
    return Grid(root, ordered, spec)


def _published(spec: dict[str, Any], method: str, teacher: str | None, student: str,
               data: str) -> dict[str, Any] | None:
    for entry in spec.get("published") or []:
        if (entry.get("method"), entry.get("teacher"), entry.get("student"),
                entry.get("data")) == (method, teacher, student, data):
            return {"top1": float(entry["top1"]), "metric": entry.get("metric", "best"),
                    "source": entry.get("source", "")}
    return None
