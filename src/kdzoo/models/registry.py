"""The model registry: ``register_model``, ``create_model``, ``list_models``."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..registry import Registry
from .features import FeatureNet

MODELS: Registry[Callable[..., FeatureNet]] = Registry("model", "kdzoo list models")
MODEL_FAMILIES: dict[str, str] = {}


def register_model(name: str, family: str = "") -> Callable:
    """Decorator for a factory ``f(num_classes=10, in_chans=3) -> FeatureNet``."""

    def decorator(factory: Callable[..., FeatureNet]) -> Callable[..., FeatureNet]:
        MODELS.register(name)(factory)
        MODEL_FAMILIES[name] = family
        return factory

    return decorator


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
) -> FeatureNet:
    """Build a registered network, optionally loading weights from ``checkpoint``.

    ``checkpoint`` may be a kdzoo export, a plain ``torch.save(model.state_dict())``, a reference
    zoo file (state dict under 'net', 'snet', 'tnet', 'net1' or 'net2') or a RepDistiller /
    mdistiller file (``{'model': state_dict}``); see :mod:`kdzoo.models.checkpoint`.
    """
    from .checkpoint import load_weights  # late import: checkpoint needs the registry

    model = MODELS.get(name)(num_classes=num_classes, in_chans=in_chans)
    model.model_name = name
    model.num_classes = num_classes
    model.in_chans = in_chans
    if checkpoint is not None:
        load_weights(model, checkpoint, key=checkpoint_key, trust=trust_checkpoint)
    return model
