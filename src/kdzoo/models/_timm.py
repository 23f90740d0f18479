"""``timm/<name>``: a ``timm.create_model`` model (the optional extra ``kdzoo[timm]``).

timm models describe themselves (https://huggingface.co/docs/timm/feature_extraction):
``model.feature_info`` lists each stage's channels, reduction and module, and
``forward_intermediates`` returns the final map and every stage in one pass;
``forward_head(x, pre_logits=True)`` gives the pool and the classifier (``get_classifier()``)
applied to it the logits. :class:`TimmNet` wraps such a model as it is. timm's ViTs list every
block as a stage (their token maps, 1/16), where torchvision's ViTs have none.

A timm model without ``forward_intermediates``, or one given ``stage_nodes`` (which override
``feature_info``), goes through its fx graph (:class:`TimmGraphNet`, :mod:`._graph`): the
return nodes are the ``module`` names of its ``feature_info`` (or the user's nodes), the pool
and logits are found in the graph. Traced with torch.fx, timm's BatchNormAct2d (MobileNetV3,
EfficientNet) appears as an ``F.batch_norm`` call on the module's statistics, not as a
BatchNorm2d module call.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from ..errors import ConfigError
from ._graph import GraphFeatureNet, make_plan, trace
from .features import FeatureInfo, FeatureNet, RawFeatures, StageInfo


def import_timm(name: str = "") -> Any:
    """The timm module, or a one-line ConfigError naming the extra that installs it."""
    try:
        import timm
    except ImportError:  # also where ``sys.modules["timm"] is None``
        what = f"model '{name}'" if name else "a timm/ model"
        raise ConfigError(f'{what} needs timm, which is not installed: pip install '
                          '"kdzoo[timm]" (or pip install timm)') from None
    return timm


def build_timm(arch: str, num_classes: int = 10, in_chans: int = 3, pretrained: bool = False,
               stage_nodes: Sequence[str] | None = None) -> FeatureNet:
    """``timm.create_model`` (timm adapts the head and the first convolution itself), wrapped
    by its metadata where it has ``forward_intermediates`` and no ``stage_nodes`` are given,
    by its graph otherwise."""
    timm = import_timm(f"timm/{arch}")
    model = timm.create_model(arch, pretrained=pretrained, num_classes=num_classes,
                              in_chans=in_chans)
    if stage_nodes is None and hasattr(model, "forward_intermediates") and \
            hasattr(model, "feature_info"):
        return TimmNet(model, num_classes)
    return TimmGraphNet(arch, model, num_classes, in_chans, stage_nodes)


class TimmNet(FeatureNet):
    """A timm model through its own metadata (``feature_info``, ``forward_intermediates``)."""

    checkpoint_prefix = "model."

    def __init__(self, model: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.model = model
        classifier = model.get_classifier()
        # Distilled ViTs return two heads: their logits then come from forward_head itself.
        self._classifier_only = isinstance(classifier, nn.Module)
        pool = getattr(classifier, "in_features", None) or \
            getattr(model, "head_hidden_size", None) or model.num_features
        self.feature_info = FeatureInfo(
            stages=tuple(StageInfo(int(d["num_chs"]), int(d["reduction"]))
                         for d in model.feature_info),
            pool=int(pool), logits=num_classes)

    def classifier_layer(self) -> nn.Module:
        return self.model.get_classifier()

    def forward_features(self, x: Tensor) -> RawFeatures:
        final, stages = self.model.forward_intermediates(x)
        pool = self.model.forward_head(final, pre_logits=True)
        logits = self.model.get_classifier()(pool) if self._classifier_only else \
            self.model.forward_head(final)
        return {"stages": list(stages), "pool": pool, "logits": logits}


def probe_size(model: nn.Module) -> int:
    """The side of the model's own input size (``pretrained_cfg['input_size']``), else 224."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size") or (3, 224, 224)
    return int(size[-1])


class TimmGraphNet(GraphFeatureNet):
    """A timm model through its fx graph: the stages at its ``feature_info`` modules, or at
    the user's ``stage_nodes``."""

    def __init__(self, arch: str, model: nn.Module, num_classes: int, in_chans: int,
                 stage_nodes: Sequence[str] | None = None) -> None:
        super().__init__()
        label = f"timm/{arch}"
        graph, names = trace(model, label)
        if stage_nodes is None:
            stage_nodes = [str(d["module"]) for d in getattr(model, "feature_info", None) or ()]
        plan = make_plan(model, graph, names, tuple(stage_nodes), in_chans, probe_size(model),
                         label)
        self._setup(model, plan, label)
