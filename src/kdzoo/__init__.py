"""kdzoo: the knowledge-distillation zoo.

The public API::

    import kdzoo
    teacher = kdzoo.create_model("resnet110", num_classes=100, checkpoint="teacher.pth")
    config = kdzoo.resolve_config(overrides={"method": {"name": "st"}, ...})
    result = kdzoo.fit(config)
"""
from . import functional
from .config import MethodParams, TrainConfig
from .data import list_datasets, load_dataset
from .engine import RunResult, evaluate, fit
from .errors import KdzooError
from .methods import (Method, MethodContext, Stage, Step, create_method, list_methods,
                      register_method)
from .models import (FeatureInfo, FeatureNet, create_model, export_model, list_models,
                     load_weights, register_model)
from .spec import config_from_dict, resolve_config
from .version import __version__

__all__ = [
    "FeatureInfo",
    "FeatureNet",
    "KdzooError",
    "Method",
    "MethodContext",
    "MethodParams",
    "RunResult",
    "Stage",
    "Step",
    "TrainConfig",
    "__version__",
    "config_from_dict",
    "create_method",
    "create_model",
    "evaluate",
    "export_model",
    "fit",
    "functional",
    "list_datasets",
    "list_methods",
    "list_models",
    "load_dataset",
    "load_weights",
    "register_method",
    "register_model",
    "resolve_config",
]
