"""KDSVD: relations between the singular vectors of consecutive stages."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from ..errors import ConfigError
from ..functional import match_spatial_size
from ..functional.feature_kd import kdsvd
from ..models.features import FeatureRequest, Features
from .base import Method, MethodContext, MethodParams, Step
from .registry import register_method


@dataclass(frozen=True)
class KDSVDParams(MethodParams):
    k: int = 1
    weight: float = 1.0
    ce_weight: float = 1.0

    def check(self, method: str) -> None:
        if self.k < 1:
            raise ConfigError(f"method {method}: k (singular vectors kept) must be at least "
                              f"1, got {self.k}")
        if self.weight < 0 or self.ce_weight < 0:
            raise ConfigError(f"method {method}: weight and ce_weight must be 0 or more, got "
                              f"{self.weight} and {self.ce_weight}")


@register_method("kdsvd")
class KDSVD(Method[KDSVDParams]):
    """Singular-value-decomposition distillation: "Self-supervised Knowledge Distillation Using
    Singular Value Decomposition", Lee, Kim & Song, ECCV 2018. Reference: megvii-research/
    mdistiller ``mdistiller/distillers/KDSVD.py`` with its defaults in
    ``mdistiller/engine/cfg.py`` (https://github.com/megvii-research/mdistiller), a port of the
    authors' TensorFlow code (https://github.com/sseung0703/SSKD_SVD). RepDistiller
    (HobbitLong/RepDistiller) has no KDSVD; its forks (e.g. ADLab-AutoDrive/ICKD) import one
    from ``distiller_zoo`` but call it without arguments, so mdistiller is the reference here.

    On the post-activation outputs of all stages (mdistiller's ``feats[1:]``: the stem is not
    used), student and teacher aligned from the end (mdistiller zips its two lists from the
    first stage; the same pairs for networks with equal stage counts, kdzoo's cross-family rule
    otherwise): loss = weight * KDSVD (see
    :func:`kdzoo.functional.feature_kd.kdsvd`, summed over consecutive stage pairs), plus the
    cross-entropy with ``ce_weight``. Defaults as mdistiller's cfg: k 1 (``KDSVD.K``), weight 1.0
    (``FEAT_WEIGHT``), ``ce_weight`` 1.0. No connector: the relations compare each network's own
    singular vectors, so the channel counts may differ.

    Where the networks' strides differ at a stage (cross-family pairs), the larger map is
    adaptive-average-pooled to the other's size first (the reference assumes equal sizes); maps of
    equal size are the reference's exactly.
    """

    paper = ("Self-supervised Knowledge Distillation Using Singular Value Decomposition, Lee, Kim "
             "& Song, ECCV 2018")
    url = "https://github.com/megvii-research/mdistiller/blob/master/mdistiller/distillers/KDSVD.py"
    needs = FeatureRequest(stages="all")

    def __init__(self, ctx: MethodContext, params: KDSVDParams) -> None:
        super().__init__(ctx, params)
        if len(self.requests["student"].positions) < 2:
            raise ConfigError("method kdsvd relates consecutive stages, and these networks share "
                              "fewer than two; choose networks with at least two stages")

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        pairs = [match_spatial_size(s, t) for s, t in self.stage_pairs(features)]
        loss = kdsvd([s for s, _ in pairs], [t for _, t in pairs], k=self.params.k)
        return {"kdsvd": self.params.weight * loss}
