"""The method registry: ``register_method``, ``create_method``, ``list_methods``."""
from __future__ import annotations

import inspect
from typing import Any, Callable

from ..errors import ConfigError
from ..registry import Registry, did_you_mean
from .base import Method, MethodContext

METHODS: Registry[type[Method]] = Registry("method", "kdzoo list methods")


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: registers a :class:`Method` subclass under ``name``."""

    def decorator(cls: type[Method]) -> type[Method]:
        cls.name = name
        METHODS.register(name)(cls)
        return cls

    return decorator


def list_methods() -> list[str]:
    """Names of every registered method."""
    return METHODS.names()


def get_method_class(name: str) -> type[Method]:
    return METHODS.get(name)


def method_defaults(name: str) -> dict[str, Any]:
    """The hyper-parameters of method ``name`` with their default values."""
    params = inspect.signature(METHODS.get(name).__init__).parameters
    return {k: p.default for k, p in params.items() if k not in ("self", "ctx")}


def _coerce(method: str, key: str, value: Any, default: Any) -> Any:
    """Check ``value`` against the type of the default (an int is a fine float)."""
    expected = type(default)
    if default is None or isinstance(value, expected) and not (
        isinstance(value, bool) and expected is not bool
    ):
        return value
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected in (tuple, list) and isinstance(value, (tuple, list)):
        return expected(value)
    raise ConfigError(
        f"method {method} hyper-parameter '{key}' must be {expected.__name__}, got {value!r}"
    )


def resolve_method_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Defaults updated with ``params``; unknown keys and wrong types are refused."""
    defaults = method_defaults(name)
    resolved = dict(defaults)
    for key, value in params.items():
        if key not in defaults:
            known = ", ".join(defaults) or "none"
            raise ConfigError(
                f"method {name} has no hyper-parameter '{key}'"
                f"{did_you_mean(key, list(defaults))}; its hyper-parameters: {known}"
            )
        resolved[key] = _coerce(name, key, value, defaults[key])
    return resolved


def create_method(name: str, ctx: MethodContext, **params: Any) -> Method:
    """Build method ``name`` for the networks described by ``ctx``."""
    cls = METHODS.get(name)
    return cls(ctx, **resolve_method_params(name, params))
