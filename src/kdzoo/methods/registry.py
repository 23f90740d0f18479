"""The method registry: ``register_method``, ``create_method``, ``list_methods``."""
from __future__ import annotations

from typing import Any, Callable

from ..registry import Registry
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
    return METHODS.get(name).Params().to_dict()


def create_method(name: str, ctx: MethodContext, **params: Any) -> Method:
    """Build method ``name`` for the networks described by ``ctx``."""
    cls = METHODS.get(name)
    return cls(ctx, cls.Params.build(name, params))
