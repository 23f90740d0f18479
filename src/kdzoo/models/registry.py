"""The model registry: ``register_model``, ``create_model``, ``list_models``, ``model_factory``.

Besides the registered kdzoo models, every name ``torchvision/<name>`` (a classification builder
of ``torchvision.models``) and ``timm/<name>`` (a ``timm.create_model`` name, with the optional
extra ``kdzoo[timm]``) is a model: :func:`model_factory` resolves both kinds, so every check of
a model name must go through it (``MODELS.get`` knows the registered names only).
``list_models`` lists kdzoo's own models."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Callable

from ..errors import ConfigError
from ..registry import Registry
from .features import FeatureNet

MODELS: Registry[Callable[..., FeatureNet]] = Registry("model", "kdzoo list models")
MODEL_FAMILIES: dict[str, str] = {}


def register_model(name: str, family: str = "", aliases: tuple[str, ...] = ()) -> Callable:
    """Decorator for a factory ``f(num_classes=10, in_chans=3) -> FeatureNet``; ``aliases`` are
    other accepted spellings (e.g. lower case)."""

    def decorator(factory: Callable[..., FeatureNet]) -> Callable[..., FeatureNet]:
        MODELS.register(name, aliases)(factory)
        MODEL_FAMILIES[name] = family
        return factory

    return decorator


def model_factory(name: str) -> Callable[..., FeatureNet]:
    """The factory ``f(num_classes=, in_chans=)`` of model ``name``: a registered kdzoo model or
    an adapter of a ``torchvision/`` or ``timm/`` model (whose factory also takes
    ``pretrained=`` and ``stage_nodes=``); a one-line ConfigError for an unknown name, with
    the nearest names."""
    # Late import: torchvision's feature extraction and timm load only when named.
    from ._foreign import foreign_factory

    factory = foreign_factory(name)
    return MODELS.get(name) if factory is None else factory


def canonical_model_name(name: str) -> str:
    """The canonical spelling of a valid model name (an alias's registered name,
    ``torchvision/`` names in lower case)."""
    return getattr(model_factory(name), "model_name", None) or MODELS.canonical(name)


def list_models() -> list[str]:
    """Names of every registered model."""
    return MODELS.names()


def create_model(
    name: str,
    num_classes: int = 10,
    in_chans: int = 3,
    checkpoint: str | Path | None = None,
    *,
    checkpoint_key: str | None = None,
    trust_checkpoint: bool = False,
    pretrained: bool = False,
    stage_nodes: Sequence[str] | None = None,
) -> FeatureNet:
    """Build a registered network, or a ``torchvision/``/``timm/`` one, optionally loading
    weights from ``checkpoint``.

    ``pretrained=True`` (torchvision and timm models only) starts from the library's default
    pretrained weights, downloaded by the library, with a fresh classifier where
    ``num_classes`` differs and the first convolution adapted to ``in_chans``; kdzoo's own
    models have no pretrained weights.

    ``checkpoint`` may be a kdzoo export, a plain ``torch.save(model.state_dict())``, a reference
    zoo file (state dict under 'net', 'snet', 'tnet', 'net1' or 'net2') or a RepDistiller /
    mdistiller file (``{'model': state_dict}``); see :mod:`kdzoo.models.checkpoint`.

    ``stage_nodes`` (torchvision and timm models only) names the network's stage outputs, in
    the node names of ``torchvision.models.feature_extraction.create_feature_extractor`` (a
    module name stands for its output, e.g. ``["layer1", "layer2.1.relu_1"]``): for a
    torchvision model outside kdzoo's table (which has no stages otherwise) or instead of
    the table, for a timm model instead of its ``feature_info``; ``[]`` gives no stages.
    Their channels and reductions are read from the traced graph; an unknown name is
    refused in one line with the nearest names.
    """
    from .checkpoint import load_weights  # late import: checkpoint needs the registry

    factory = model_factory(name)
    canonical = getattr(factory, "model_name", None) or MODELS.canonical(name)
    if pretrained and not getattr(factory, "supports_pretrained", False):
        raise ConfigError(f"model {canonical} has no pretrained weights (only torchvision/ and "
                          "timm/ models do): drop pretrained, or pass a checkpoint")
    extra: dict[str, object] = {"pretrained": True} if pretrained else {}
    if stage_nodes is not None:
        if not getattr(factory, "supports_stage_nodes", False):
            raise ConfigError(f"stage_nodes applies to torchvision/ and timm/ models, not to "
                              f"kdzoo's {canonical}, whose stages are its own: drop stage_nodes")
        if isinstance(stage_nodes, str) or \
                not all(isinstance(n, str) and n for n in stage_nodes):
            raise ConfigError(f"stage_nodes of {canonical} must be a list of node names, not "
                              f"{stage_nodes!r}")
        extra["stage_nodes"] = tuple(stage_nodes)
    model = factory(num_classes=num_classes, in_chans=in_chans, **extra)
    model.model_name = canonical
    model.num_classes = num_classes
    model.in_chans = in_chans
    if checkpoint is not None:
        load_weights(model, checkpoint, key=checkpoint_key, trust=trust_checkpoint)
    return model
