"""One run, resolved once.

:func:`resolve_config` stacks the layers of a run's settings, each overriding the one before:
dataclass defaults < preset (``configs/presets/NAME.yaml``) < the authors' recipes
(:mod:`kdzoo.recipes`, only for keys nobody else sets) < ``--config FILE.yaml`` < command-line
flags < ``--set key=value``; then checks every name against the registries (method, models,
dataset, what the method's roles need) and builds the method's typed hyper-parameters, once.
The result is the immutable :class:`~kdzoo.config.TrainConfig` that building, fitting, the
resume check, the grid and the report read. :func:`config_from_dict` turns a resolved config
(a run's config.yaml) back into the same object.

Unknown keys and values of the wrong type are errors (with "did you mean"), never ignored.
"""
from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from .config import MethodParams, TrainConfig, build_section, changes_result
from .data.base import DATASETS
from .errors import ConfigError, KdzooError
from .layers import deep_merge, flatten, load_preset, load_yaml_file, parse_set
from .methods import METHODS
from .models import model_factory
from .recipes import recipe_layer


def method_params(name: str, values: Mapping[str, Any]) -> MethodParams:
    """Method ``name``'s typed hyper-parameters: its defaults updated with ``values`` (unknown
    keys, wrong types and values out of range refused in one line)."""
    return METHODS.get(name).Params.build(name, values)


def config_from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """A resolved config (as config.yaml holds it) as the run spec: typed, checked against the
    registries, frozen. Keys it lacks take their defaults."""
    config = build_section(TrainConfig, data, "", method_params)
    check_names(config)
    return config


def resolve_config(
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    assignments: list[str] | None = None,
    on_top: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """The run spec of defaults < preset < recipes < ``config_file`` < ``overrides`` (flags) <
    ``assignments`` (``--set key=value``) < ``on_top`` (what a caller such as ``kdzoo tune``
    sets for each of its runs); the recipes fill only keys no other layer sets."""
    from_file = load_yaml_file(config_file) if config_file else {}
    return config_from_dict(_layered([from_file, dict(overrides or {}),
                                      parse_set(assignments or []), dict(on_top or {})]))


def default_settings(method: str, student: str, data: str) -> dict[str, Any]:
    """The result settings (:meth:`TrainConfig.result_settings`) of a plain run of ``method``
    on ``student`` and ``data``: defaults, the default preset and the recipes that apply; what
    a grid compares a run with to name what is particular about it."""
    return copy.deepcopy(_default_settings(method, student, data))


@lru_cache(maxsize=None)
def _default_settings(method: str, student: str, data: str) -> dict[str, Any]:
    merged = _layered([{"method": {"name": method}, "student": {"name": student},
                        "data": {"name": data}}])
    return build_section(TrainConfig, merged, "", method_params).result_settings()


def _layered(layers: list[dict[str, Any]]) -> dict[str, Any]:
    """The merged nested dict of defaults < preset < recipes < ``layers``."""
    preset = TrainConfig().preset
    for layer in layers:
        preset = layer.get("preset", preset)
    base = TrainConfig().to_dict()
    if preset is not None:
        if not isinstance(preset, str):
            raise ConfigError(f"config key 'preset' must be a string, got {preset!r}")
        settings = load_preset(preset)
        base = deep_merge(base, settings["settings"])
        # the preset's conventions for the run's dataset (CIFAR normalisation constants)
        data_name = (_stack(base, layers).get("data") or {}).get("name")
        base = deep_merge(base, settings["datasets"].get(data_name) or {})
    merged = _stack(base, layers)
    if merged.get("use_recipes", True) is not False:
        explicit: dict[str, Any] = {}
        for layer in layers:
            explicit = deep_merge(explicit, layer)
        recipes, names = recipe_layer(merged, explicit)
        if "method" in recipes:  # the recipe is for the run's method: keep its name with it
            recipes["method"] = {"name": merged["method"]["name"], **recipes["method"]}
        if names:
            merged = _stack(_merge_layer(base, recipes), layers)
            merged["recipes"] = names
    return merged


def _stack(base: dict[str, Any], layers: list[dict[str, Any]]) -> dict[str, Any]:
    for layer in layers:
        base = _merge_layer(base, layer)
    return base


def _merge_layer(merged: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    # A layer that names another method drops the hyper-parameters set for the previous one
    # (a preset's or config file's ``method.weight`` must not leak into a different method).
    section = layer.get("method")
    if isinstance(section, dict) and "name" in section:
        previous = merged.get("method", {})
        if isinstance(previous, dict) and previous.get("name") != section["name"]:
            merged = {**merged, "method": {}}
    return deep_merge(merged, layer)


def check_names(config: TrainConfig) -> None:
    """Every name against its registry, and what the method's roles need, in one line each."""
    name = config.method.name
    method_cls = METHODS.get(name)
    if config.loss.kd and not method_cls.frozen_roles():
        raise ConfigError(f"loss.kd adds Hinton's KD on a frozen teacher's logits, and method "
                          f"{name} has no frozen teacher: drop loss.kd")
    _check_model(config.student.name, config.student.stage_nodes, "student")
    DATASETS.get(config.data.name)
    for role in method_cls.roles:
        if role.source == "student":
            continue
        section = getattr(config, role.source)
        if section.name is None:
            raise ConfigError(f"method {name} needs a {role.name}: pass --{role.source} NAME" +
                              ("" if role.trainable else " --teacher-checkpoint FILE"))
        _check_model(section.name, section.stage_nodes, role.source)
        # A trained peer (DML) may start untrained; a frozen teacher must be trained.
        if not role.trainable and section.checkpoint is None and not section.untrained \
                and not section.pretrained:
            raise ConfigError(
                f"method {name} needs a trained teacher: pass --teacher-checkpoint FILE (train "
                f"one with `kdzoo train --method baseline --student {section.name} ...`), or "
                "--untrained-teacher for smoke tests")


def _check_model(name: str, stage_nodes: tuple[str, ...] | None, section: str) -> None:
    factory = model_factory(name)
    if stage_nodes is not None and not getattr(factory, "supports_stage_nodes", False):
        raise ConfigError(f"{section}.stage_nodes applies to torchvision/ and timm/ models, not "
                          f"to kdzoo's {name}, whose stages are its own: drop it")


def result_differences(saved: Mapping[str, Any], current: TrainConfig) -> list[str]:
    """``key (saved in the run, now)`` for every setting that can change the result and
    differs between a run's recorded config (``saved``, a config.yaml dict, read with today's
    defaults for keys it lacks) and ``current``."""
    try:
        old = config_from_dict(saved).result_settings()
    except KdzooError:  # written by another kdzoo, or for a method it no longer has
        old = {k: v for k, v in flatten(saved).items() if changes_result(k)}
    new = current.result_settings()
    return [f"{k} ({old.get(k)!r} in the run, {new.get(k)!r} now)"
            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


__all__ = ["check_names", "config_from_dict", "default_settings", "method_params",
           "resolve_config", "result_differences"]
