"""Named feature points: the one question every kdzoo network answers.

A distillation method asks for points by name (``"stage3"``, ``"pool"``, ...) and gets them, for
student and teacher alike, from the same forward pass that produces the logits. The metadata in
``feature_info`` (channels, stride) lets a method size its connectors without running a dummy
forward pass through the teacher.

Standard points of the zoo's convolutional networks (mirroring the reference zoo's
``stem, rb1, rb2, rb3, feat, out`` with each ``(pre, post)`` pair split in two):

==============  =====================================================================
``stem_pre``    output of the stem's BatchNorm, before its ReLU
``stem``        after the stem's ReLU
``stageK_pre``  last block of stage K after the residual add, before its final ReLU
``stageK``      the same after the ReLU (the stage's output)
``pool``        globally pooled feature vector (the reference's ``feat``)
``logits``      classifier output
==============  =====================================================================
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from torch import Tensor, nn

Feats = dict[str, Tensor]


@dataclass(frozen=True)
class FeatureInfo:
    """What a feature point holds: ``channels`` (or vector length) and the ``stride`` of a map
    relative to the input image (``None`` for vectors such as ``pool`` and ``logits``)."""

    channels: int
    stride: int | None = None


class FeatureNet(nn.Module):
    """Base class of every kdzoo network.

    Subclasses fill ``feature_info`` and implement ``_all_features(x)``. ``forward(x)`` returns the
    logits, so a kdzoo network is a drop-in ``nn.Module`` classifier. The attributes
    ``model_name``, ``num_classes`` and ``in_chans`` are set by :func:`kdzoo.create_model` and
    travel with exported checkpoints.
    """

    feature_info: dict[str, FeatureInfo]
    model_name: str = ""
    num_classes: int = 0
    in_chans: int = 3

    def _all_features(self, x: Tensor) -> Feats:
        raise NotImplementedError

    def forward_features(self, x: Tensor, points: Iterable[str] | None = None) -> Feats:
        """All feature points of one forward pass, or only ``points`` when given."""
        feats = self._all_features(x)
        if points is None:
            return feats
        return {name: feats[name] for name in points}

    def forward(self, x: Tensor) -> Tensor:
        return self._all_features(x)["logits"]


def feature_shapes(model: FeatureNet, image_size: int) -> dict[str, tuple[int, ...]]:
    """Per-sample shapes of every point for square inputs of ``image_size`` (from metadata)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, info in model.feature_info.items():
        if info.stride is None:
            shapes[name] = (info.channels,)
        else:
            side = -(-image_size // info.stride)  # ceil: a stride-2 3x3 conv with padding 1
            shapes[name] = (info.channels, side, side)
    return shapes


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["FeatureInfo", "FeatureNet", "Feats", "feature_shapes", "count_parameters"]
