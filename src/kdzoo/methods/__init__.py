"""Distillation methods. Importing this package registers every method; adding one is a new
file here plus one import line below."""
from . import baseline, st  # noqa: F401  (register the methods)
from .base import Method, MethodContext, Stage, Step
from .registry import (METHODS, create_method, get_method_class, list_methods, method_defaults,
                       register_method, resolve_method_params)

__all__ = [
    "METHODS",
    "Method",
    "MethodContext",
    "Stage",
    "Step",
    "create_method",
    "get_method_class",
    "list_methods",
    "method_defaults",
    "register_method",
    "resolve_method_params",
]
