"""Search spaces as data: what ``kdzoo tune`` searches, per setting.

A distribution is written as text, in the packaged ``configs/search-spaces.yaml`` (each method's
default space: its loss weights, temperatures and the knobs its authors tune), in a
``--space-file`` YAML of the same shape and on the command line
(``--space method.weight=loguniform:0.01:100``)::

    uniform:LOW:HIGH        a float, uniformly
    loguniform:LOW:HIGH     a float, uniformly in log scale (LOW > 0)
    int:LOW:HIGH            an integer in [LOW, HIGH]
    logint:LOW:HIGH         an integer, log scale (LOW >= 1)
    categorical:A,B,C       one of the values (numbers, true/false or names)

A space maps dotted config keys (``method.weight``, ``optim.lr``, ``optim.weight_decay``) to
distributions. Keys must be settings that change a run's result; a method key must be one of
the method's hyper-parameters. ``kdzoo tune`` resolves a run at both bounds before any trial
runs (:func:`kdzoo.tune.search.check_bounds`), so a value the method refuses (a negative
weight) is caught at once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal, Mapping

import yaml

from ..config import TrainConfig, changes_result
from ..errors import ConfigError
from ..layers import flatten, load_yaml_file
from ..registry import did_you_mean

Kind = Literal["uniform", "loguniform", "int", "logint", "categorical"]
KINDS: tuple[str, ...] = ("uniform", "loguniform", "int", "logint", "categorical")
SPACES_FILE = "search-spaces.yaml"


@dataclass(frozen=True)
class Distribution:
    """One setting's distribution: a range (``low``, ``high``) or ``choices``."""

    kind: Kind
    low: float | int | None = None
    high: float | int | None = None
    choices: tuple[Any, ...] = ()

    @property
    def log(self) -> bool:
        return self.kind in ("loguniform", "logint")

    def text(self) -> str:
        """The distribution as it is written (``loguniform:0.01:100``)."""
        if self.kind == "categorical":
            return "categorical:" + ",".join(_format(c) for c in self.choices)
        return f"{self.kind}:{_format(self.low)}:{_format(self.high)}"

    def suggest(self, trial: Any, name: str) -> Any:
        """The value an Optuna trial draws for setting ``name``."""
        if self.kind == "categorical":
            return trial.suggest_categorical(name, list(self.choices))
        if self.kind in ("int", "logint"):
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(name, float(self.low), float(self.high), log=self.log)

    def bounds(self) -> list[Any]:
        """The values a space check resolves: both ends, or every choice."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _choice(text: str) -> Any:
    """A categorical value: a number (``1e-3`` too, which YAML 1.1 reads as a string),
    true/false, or a name."""
    text = text.strip()
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def parse_distribution(key: str, text: Any) -> Distribution:
    """The distribution ``text`` for setting ``key`` (one-line error for a bad one)."""
    if not isinstance(text, str) or ":" not in text:
        raise ConfigError(f"search space {key}: {text!r} is not a distribution; write e.g. "
                          f"{key}=loguniform:0.01:100 (kinds: {', '.join(KINDS)})")
    kind, _, rest = text.strip().partition(":")
    kind = kind.strip()
    if kind not in KINDS:
        raise ConfigError(f"search space {key}: unknown distribution '{kind}'"
                          f"{did_you_mean(kind, KINDS)}; kinds: {', '.join(KINDS)}")
    if kind == "categorical":
        choices = tuple(_choice(c) for c in rest.split(",") if c.strip())
        if not choices:
            raise ConfigError(f"search space {key}: categorical needs at least one value, "
                              "e.g. categorical:2,4,8")
        return Distribution("categorical", choices=choices)
    parts = rest.split(":")
    if len(parts) != 2:
        raise ConfigError(f"search space {key}: {kind} needs LOW:HIGH, e.g. {kind}:1:10")
    integer = kind in ("int", "logint")
    try:
        low, high = (int(p) if integer else float(p) for p in parts)
    except ValueError:
        what = "integers" if integer else "numbers"
        raise ConfigError(f"search space {key}: the bounds of {text!r} must be {what}") \
            from None
    if not all(math.isfinite(v) for v in (low, high)) or not low < high:
        raise ConfigError(f"search space {key}: the range of {text!r} is empty or inverted; "
                          "write LOW < HIGH")
    if kind == "loguniform" and low <= 0 or kind == "logint" and low < 1:
        raise ConfigError(f"search space {key}: a log-scale range must start above "
                          f"{'zero' if kind == 'loguniform' else '1 or at 1'}, got {text!r}")
    return Distribution(kind, low, high)  # type: ignore[arg-type]


Space = dict[str, Distribution]


def method_spaces() -> dict[str, dict[str, str]]:
    """Every method's default space, as written in the packaged ``search-spaces.yaml``
    (method -> hyper-parameter -> distribution text)."""
    text = (resources.files("kdzoo") / "configs" / SPACES_FILE).read_text(encoding="utf-8")
    return yaml.safe_load(text)["methods"]


def default_space(method: str) -> Space:
    """Method ``method``'s default space (``method.`` keys); empty for the baseline."""
    entries = method_spaces().get(method) or {}
    return {f"method.{k}": parse_distribution(f"method.{k}", v) for k, v in entries.items()}


def parse_space_assignments(assignments: list[str]) -> Space:
    """``--space KEY=DISTRIBUTION`` options as a space."""
    space: Space = {}
    for item in assignments:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--space {item!r}: write KEY=DISTRIBUTION, e.g. "
                              "--space method.weight=loguniform:0.01:100")
        space[key.strip()] = parse_distribution(key.strip(), text.strip())
    return space


def load_space_file(path: str) -> Space:
    """A YAML space file: ``{key: distribution}``, nested or dotted (``method: {weight: ...}``);
    a value ``null`` removes a key of the method's default space."""
    flat = flatten(load_yaml_file(path))
    return {k: parse_distribution(k, v) if v is not None else None  # type: ignore[misc]
            for k, v in flat.items()}


def build_space(config: TrainConfig, file: str | None = None,
                assignments: list[str] | None = None, defaults: bool = True) -> Space:
    """The space a study of ``config`` searches: the method's default space (``defaults``),
    then ``file``'s entries, then ``--space`` assignments; checked against ``config``."""
    space: dict[str, Distribution | None] = dict(default_space(config.method.name)) \
        if defaults else {}
    if file:
        space.update(load_space_file(file))
    space.update(parse_space_assignments(assignments or []))
    found = {k: v for k, v in space.items() if v is not None}
    check_keys(found, config)
    if not found:
        raise ConfigError(f"nothing to search: method {config.method.name} has no default "
                          "space; give one with --space KEY=DISTRIBUTION (e.g. "
                          "optim.lr=loguniform:0.01:0.2)")
    return found


def check_keys(space: Mapping[str, Distribution], config: TrainConfig) -> None:
    """Each key a setting of ``config`` that changes a result (one line otherwise)."""
    settings = flatten(config.to_dict())
    method = config.method.name
    params = sorted(config.method.params.to_dict())
    for key in space:
        if key.startswith("method."):
            name = key.removeprefix("method.")
            if name == "name" or name not in params:
                known = ", ".join(params) or "none"
                raise ConfigError(f"search space {key}: method {method} has no hyper-parameter "
                                  f"'{name}'{did_you_mean(name, params)}; its hyper-parameters: "
                                  f"{known}")
        elif key not in settings:
            keys = [k for k in settings if changes_result(k)]
            raise ConfigError(f"search space {key}: unknown config key{did_you_mean(key, keys)}")
        elif not changes_result(key) or key in ("seed", "data.val_split", "data.name",
                                                 "data.train_subset") or \
                key.startswith(("teacher.", "student.")):
            raise ConfigError(f"search space {key}: not a setting to tune (it does not change "
                              "what is learnt, or it defines the comparison); search a method "
                              "hyper-parameter or an optimiser setting")


def shown(value: Any) -> str:
    """A drawn value as logs and tables print it (floats to 4 significant digits)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def describe(space: Mapping[str, Distribution]) -> dict[str, str]:
    """``{key: "loguniform:0.01:100"}``: the space as written (for summaries and listings)."""
    return {k: d.text() for k, d in space.items()}
