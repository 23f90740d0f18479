"""Networks with the feature contract of :mod:`kdzoo.models.features`. Importing this package
registers every model: each module in this folder other than the framework modules below (and
those starting with ``_``) defines models, so adding an architecture is adding one file."""
import importlib
import pkgutil

from .checkpoint import export_model, load_weights, read_checkpoint_file
from .features import (FeatureInfo, FeatureNet, FeatureRequest, Features, StageInfo,
                       count_parameters, feature_shapes, freeze)
from .registry import MODELS, create_model, list_models, model_factory, register_model

_FRAMEWORK = {"checkpoint", "features", "registry"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _FRAMEWORK and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "MODELS",
    "FeatureInfo",
    "FeatureNet",
    "FeatureRequest",
    "Features",
    "StageInfo",
    "count_parameters",
    "create_model",
    "export_model",
    "feature_shapes",
    "freeze",
    "list_models",
    "load_weights",
    "model_factory",
    "read_checkpoint_file",
    "register_model",
]
