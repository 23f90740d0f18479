"""Any torchvision or timm classification model as a kdzoo network: ``torchvision/<name>``
(a classification builder of ``torchvision.models``) and ``timm/<name>`` (a
``timm.create_model`` name; timm is the optional extra ``kdzoo[timm]``).

This module resolves the names and builds the factories; the adapters live in
:mod:`._torchvision` (torchvision's models, their stages from an explicit table of return nodes
per family), :mod:`._timm` (timm's models, their stages from timm's ``feature_info``) and
:mod:`._graph` (what both share: the fx trace, shapes from ``ShapeProp``, the pool and logits
found in the graph, one ``create_feature_extractor`` module).

The stages are described, never guessed: a torchvision model outside the table has none
(``stages=()``, so logit methods work) unless ``stage_nodes`` names them,
``create_model("torchvision/<name>", stage_nodes=["layer1", ...])``, in the node names
``torchvision.models.feature_extraction.create_feature_extractor`` accepts; for a timm model
``stage_nodes`` overrides its ``feature_info``.

The adapters keep the wrapped library model under ``self.model``, so their state-dict keys are
the library's keys prefixed ``model.`` (``checkpoint_prefix``); a plain torchvision or timm
state dict loads into them (:mod:`kdzoo.models.checkpoint` adds the prefix). The stage nodes
change no key, so a checkpoint loads whatever stages the model is given.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from ..errors import ConfigError
from ..registry import did_you_mean
from ._timm import build_timm, import_timm
from ._torchvision import TorchvisionNet
from .features import FeatureNet

PREFIXES = ("torchvision", "timm")


# --------------------------------------------------------------------------------------------
# Names


def split_name(name: str) -> tuple[str, str] | None:
    """``("torchvision", "resnet18")`` for ``torchvision/resnet18``; None for a name without a
    slash (a kdzoo model); a one-line ConfigError for an unknown prefix or an empty model."""
    prefix, slash, rest = name.partition("/")
    if not slash:
        return None
    if prefix not in PREFIXES:
        hint = did_you_mean(prefix, list(PREFIXES))
        raise ConfigError(f"unknown model '{name}': a name with a slash must start with "
                          f"'torchvision/' or 'timm/', not '{prefix}/'{hint}")
    if not rest.strip():
        example = "resnet18" if prefix == "torchvision" else "mobilenetv3_small_050"
        raise ConfigError(f"model name '{name}' names no {prefix} model after the slash, e.g. "
                          f"'{prefix}/{example}'")
    return prefix, rest


def torchvision_names() -> list[str]:
    import torchvision.models

    return torchvision.models.list_models(module=torchvision.models)


def resolve_torchvision(rest: str) -> str:
    """The torchvision builder name for ``rest`` (case-insensitive), or a one-line ConfigError
    with the nearest names."""
    names = torchvision_names()
    if rest.lower() in names:
        return rest.lower()
    hint = did_you_mean(rest, names)
    raise ConfigError(f"unknown model 'torchvision/{rest}': torchvision has no classification "
                      f"model '{rest}'{hint}; torchvision.models.list_models"
                      "(module=torchvision.models) lists them")


def resolve_timm(rest: str) -> str:
    """``rest`` when timm knows it (with or without a pretrained tag such as ``.a1_in1k``; a
    ``hf-hub:``/``local-dir:`` name is passed through), else a one-line ConfigError."""
    timm = import_timm(f"timm/{rest}")
    if rest.startswith(("hf-hub:", "local-dir:")) or timm.is_model(rest):
        return rest
    hint = did_you_mean(rest, timm.list_models())
    raise ConfigError(f"unknown model 'timm/{rest}': timm has no model '{rest}'{hint}; "
                      "timm.list_models() lists them")


def foreign_factory(name: str) -> Callable[..., FeatureNet] | None:
    """The factory ``f(num_classes, in_chans, pretrained=False, stage_nodes=None)`` for a
    ``torchvision/`` or ``timm/`` name, None for a name without a slash, a one-line
    ConfigError for a bad name."""
    parts = split_name(name)
    if parts is None:
        return None
    prefix, rest = parts
    if prefix == "torchvision":
        arch = resolve_torchvision(rest)
        build: Callable[..., FeatureNet] = TorchvisionNet
    else:
        arch = resolve_timm(rest)
        build = build_timm

    def factory(num_classes: int = 10, in_chans: int = 3, pretrained: bool = False,
                stage_nodes: Sequence[str] | None = None) -> FeatureNet:
        return build(arch, num_classes=num_classes, in_chans=in_chans, pretrained=pretrained,
                     stage_nodes=stage_nodes)

    factory.__name__ = f"{prefix}_{arch}".replace("-", "_").replace(".", "_")
    factory.__doc__ = f"{prefix} model {arch}, adapted to kdzoo's feature contract."
    factory.model_name = f"{prefix}/{arch}"  # type: ignore[attr-defined]
    factory.supports_pretrained = True  # type: ignore[attr-defined]
    factory.supports_stage_nodes = True  # type: ignore[attr-defined]
    return factory
