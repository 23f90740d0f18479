"""Networks with named feature points. Importing this package registers every model."""
from . import cifar_resnet  # noqa: F401  (registers the CIFAR ResNets)
from .checkpoint import export_model, load_weights, read_checkpoint_file
from .features import FeatureInfo, FeatureNet, Feats, count_parameters, feature_shapes
from .registry import MODELS, create_model, list_models, register_model

__all__ = [
    "MODELS",
    "FeatureInfo",
    "FeatureNet",
    "Feats",
    "count_parameters",
    "create_model",
    "export_model",
    "feature_shapes",
    "list_models",
    "load_weights",
    "read_checkpoint_file",
    "register_model",
]
