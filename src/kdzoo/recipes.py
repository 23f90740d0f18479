"""Recipes as data: the settings the authors of a method publish for a dataset and a pair.

Each file ``configs/recipes/*.yaml`` holds rules::

    - name: dkd-beta-6-vgg13
      when: {method: dkd, data: cifar100, teacher: vgg13, student: [vgg8, MobileNetV2]}
      set: {method: {beta: 6.0}}
      source: "megvii-research/mdistiller@a08d46f:configs/cifar100/dkd/vgg13_vgg8.yaml; ..."

A rule applies when every key of ``when`` matches the run (a list matches any of its values;
``params`` compares method hyper-parameters, e.g. ``{standardize: true}``). Its ``set`` values
fill the keys the user did not set (a preset, a config file, flags and ``--set`` always win), in
file order (a later rule wins over an earlier one). The names of the rules that set something
are recorded in the run's config (``recipes``) and summary; ``--set use_recipes=false`` turns
them off.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from .layers import flatten

WHEN_KEYS = {"method", "teacher", "student", "data", "preset", "params"}


@dataclass(frozen=True)
class Recipe:
    name: str
    when: dict[str, Any]
    settings: dict[str, Any]
    source: str


@lru_cache(maxsize=1)
def load_recipes() -> tuple[Recipe, ...]:
    """Every packaged rule, file by file in name order."""
    folder = resources.files("kdzoo") / "configs" / "recipes"
    rules = []
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        if not path.name.endswith(".yaml"):
            continue
        for entry in yaml.safe_load(path.read_text()) or []:
            unknown = set(entry["when"]) - WHEN_KEYS
            assert not unknown, f"{path.name}: rule {entry['name']} has unknown keys {unknown}"
            rules.append(Recipe(entry["name"], entry["when"], entry["set"], entry["source"]))
    return tuple(rules)


def _matches(wanted: Any, value: Any) -> bool:
    return value in wanted if isinstance(wanted, list) else value == wanted


def applies(recipe: Recipe, config: dict[str, Any]) -> bool:
    """Whether ``recipe`` matches the merged config dict ``config`` (method params flat in
    ``config["method"]``, as in config.yaml)."""
    method = config.get("method") or {}
    found = {"method": method.get("name"), "teacher": (config.get("teacher") or {}).get("name"),
             "student": (config.get("student") or {}).get("name"),
             "data": (config.get("data") or {}).get("name"), "preset": config.get("preset")}
    for key, wanted in recipe.when.items():
        if key == "params":
            if not all(_matches(v, method.get(k)) for k, v in wanted.items()):
                return False
        elif not _matches(wanted, found[key]):
            return False
    return True


def recipe_layer(config: dict[str, Any], explicit: dict[str, Any]) -> tuple[dict[str, Any],
                                                                            list[str]]:
    """The settings the matching rules give for keys not in ``explicit`` (what the user set),
    and the names of the rules that gave any."""
    given = set(flatten(explicit))
    layer: dict[str, Any] = {}
    names: list[str] = []
    for recipe in reversed(load_recipes()):  # a later rule wins: it goes first
        if not applies(recipe, config):
            continue
        fresh = {k: v for k, v in flatten(recipe.settings).items() if k not in given}
        if not fresh:
            continue
        names.insert(0, recipe.name)
        given.update(fresh)
        for key, value in fresh.items():
            node = layer
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    return layer, names
