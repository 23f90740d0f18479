"""One small generic registry, used for models, methods and datasets.

``Registry("model")`` gives ``register(name)`` (a decorator), ``get(name)`` and ``names()``.
An unknown name raises a :class:`~kdzoo.errors.ConfigError` that suggests the nearest names.
"""
from __future__ import annotations

import difflib
import re
from typing import Callable, Generic, Iterator, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def did_you_mean(name: str, choices: list[str]) -> str:
    """A ' (did you mean 'x'?)' hint for a near-miss, or '' when nothing is close."""
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    if not close:
        lowered = [c for c in choices if c.lower() == name.lower()]
        close = lowered
    if not close:
        return ""
    quoted = [f"'{c}'" for c in close]
    listed = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
    return f" (did you mean {listed}?)"


def natural_key(name: str) -> list[object]:
    """Sort key that orders embedded numbers by value and ignores case: resnet8 < resnet20 <
    ResNet50 < resnet110."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name.lower())]


class Registry(Generic[T]):
    """Maps names to objects (classes or factory functions) of one kind."""

    def __init__(self, kind: str, list_command: str | None = None) -> None:
        self.kind = kind
        self.list_command = list_command
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}  # other spellings -> registered name

    def register(self, name: str, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` (and ``aliases``, which ``get`` accepts
        but ``names`` does not list)."""
        def decorator(obj: T) -> T:
            for key in (name, *aliases):
                if key in self:
                    raise ValueError(f"{self.kind} '{key}' is registered twice")
            self._entries[name] = obj
            self._aliases.update({alias: name for alias in aliases})
            return obj

        return decorator

    def unregister(self, name: str) -> None:
        """Remove an entry (for tests and plugins that register temporarily)."""
        self._entries.pop(name, None)
        self._aliases = {a: n for a, n in self._aliases.items() if n != name}

    def canonical(self, name: str) -> str:
        """The registered name of ``name`` (itself or the name it is an alias of)."""
        return self._aliases.get(name, name)

    def get(self, name: str) -> T:
        try:
            return self._entries[self.canonical(name)]
        except KeyError:
            hint = did_you_mean(name, self.names())
            where = f"; `{self.list_command}` lists them" if self.list_command else ""
            raise ConfigError(
                f"unknown {self.kind} '{name}'{hint}{where}"
            ) from None

    def names(self) -> list[str]:
        """Registered names in natural order (resnet8, resnet20, resnet110)."""
        return sorted(self._entries, key=natural_key)

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
