"""Distillation methods. Importing this package registers every method: each module in this
folder (other than the framework modules below) holds one method, so adding a method is adding
one file."""
import importlib
import pkgutil

from ..core import Role, Stage, Step
from .base import Method, MethodContext, MethodParams
from .registry import (METHODS, create_method, get_method_class, list_methods, method_defaults,
                       register_method)

_FRAMEWORK = {"base", "registry"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _FRAMEWORK and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "METHODS",
    "Method",
    "MethodContext",
    "MethodParams",
    "Role",
    "Stage",
    "Step",
    "create_method",
    "get_method_class",
    "list_methods",
    "method_defaults",
    "register_method",
]
