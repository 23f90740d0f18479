"""kdzoo: the knowledge-distillation zoo.

The public API::

    import kdzoo
    teacher = kdzoo.create_model("resnet110", num_classes=100, checkpoint="teacher.pth")
    config = kdzoo.resolve_config(overrides={"method": {"name": "st"}, ...})
    result = kdzoo.fit(config)
"""
__version__ = "0.1.0"

from . import functional  # noqa: E402
from .config import TrainConfig, config_from_dict, resolve_config  # noqa: E402
from .data import list_datasets, load_dataset  # noqa: E402
from .engine import RunResult, evaluate, fit  # noqa: E402
from .errors import KdzooError  # noqa: E402
from .methods import (Method, MethodContext, Stage, Step, create_method,  # noqa: E402
                      list_methods, register_method)
from .models import (FeatureInfo, FeatureNet, create_model, export_model,  # noqa: E402
                     list_models, load_weights, register_model)

__all__ = [
    "FeatureInfo",
    "FeatureNet",
    "KdzooError",
    "Method",
    "MethodContext",
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
