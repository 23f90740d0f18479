"""The layers a run's settings come from, as plain nested dicts: presets, YAML files and
``--set key=value`` assignments, and the two operations on them (merging and flattening).

:func:`kdzoo.spec.resolve_config` stacks them (defaults < preset < recipes < config file < flags
< ``--set``) and turns the result into the one immutable run spec.
"""
from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import ConfigError
from .registry import did_you_mean


def list_presets() -> list[str]:
    folder = resources.files("kdzoo") / "configs" / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str) -> dict[str, Any]:
    """Preset ``name``: ``{"settings": {...}, "datasets": {DATA: {...}}, "source": "..."}``, the
    settings of every run and, per dataset, those on top for a run on it (normalisation
    constants are a dataset's)."""
    if name not in list_presets():
        raise ConfigError(f"unknown preset '{name}'{did_you_mean(name, list_presets())}; "
                          f"presets: {', '.join(list_presets())}")
    text = (resources.files("kdzoo") / "configs" / "presets" / f"{name}.yaml").read_text()
    found = yaml.safe_load(text) or {}
    return {"settings": {k: v for k, v in found.items() if k not in ("datasets", "source")},
            "datasets": found.get("datasets") or {}, "source": found.get("source", "")}


def load_yaml_file(path: str | Path) -> dict[str, Any]:
    """A YAML file holding a mapping; any problem is one :class:`ConfigError` line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}: fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return data


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": 0.1}``: nested keys joined by dots."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` on top, nested mappings merged key by key (copies)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_set(assignments: list[str]) -> dict[str, Any]:
    """``["optim.lr=0.05", "method.temperature=3"]`` -> nested dict (values parsed as YAML)."""
    result: dict[str, Any] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got '{item}' (e.g. --set optim.lr=0.05)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = result
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: '{part}' is set twice with different shapes")
        node[parts[-1]] = value
    return result


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`flatten`: ``{"optim.lr": 0.1}`` -> ``{"optim": {"lr": 0.1}}``."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested
