"""KDSVD: relations between the singular vectors of consecutive stages."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from ..errors import ConfigError
from ..functional import match_spatial_size
from ..functional.feature_kd import KDSVDVariant, kdsvd
from ..models.features import FeatureRequest, Features
from .base import Method, MethodContext, MethodParams, Step
from .registry import register_method


@dataclass(frozen=True)
class KDSVDParams(MethodParams):
    variant: KDSVDVariant = "mdistiller"
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
    Singular Value Decomposition", Lee, Kim & Song, ECCV 2018, whose authors' code is
    TensorFlow (https://github.com/sseung0703/SSKD_SVD). Two PyTorch ports, by ``variant``:

    * ``"mdistiller"`` (default): megvii-research/mdistiller@a08d46f
      ``mdistiller/distillers/KDSVD.py``, defaults in ``mdistiller/engine/cfg.py`` (lines 92-97:
      ``K`` 1, ``FEAT_WEIGHT`` 1, ``CE_WEIGHT`` 1) and ``configs/cifar100/kdsvd.yaml``; each map
      decomposed as the (C*H) x W matrix ``view(B, C*H, W)``.
    * ``"repdistiller"``: HobbitLong/RepDistiller@b84f547 ``distiller_zoo/KDSVD.py``, called as
      ``KDSVD()`` (k 1) on ``feat[1:-1]`` with the losses summed (``train_student.py`` line 210,
      ``helper/loops.py`` lines 157-161); each map decomposed as the (H*W) x C matrix, as the
      TensorFlow original does, so student and teacher need equal channel counts at every stage
      pair (RepDistiller's scripts give no ``-b`` for it; the weight stays 1).

    On the post-activation outputs of all stages (mdistiller's ``feats[1:]``, RepDistiller's
    ``feat[1:-1]``: the stem and the pooled feature are not used), student and teacher aligned
    from the end (both references zip their two lists from the first stage; the same pairs for
    networks with equal stage counts, kdzoo's cross-family rule otherwise): loss = weight *
    KDSVD (see :func:`kdzoo.functional.feature_kd.kdsvd`, summed over consecutive stage pairs),
    plus the cross-entropy with ``ce_weight``. No connector: the relations compare each
    network's own singular vectors.

    "mdistiller": where the networks' widths differ at a stage (cross-family pairs), the larger
    map is adaptive-average-pooled to the other's size first (the reference assumes equal
    sizes); maps of equal size are the reference's exactly. "repdistiller" needs no pooling
    (the vectors live on the channels) and refuses, before the run, stage pairs of different
    channel counts.
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
        if params.variant == "repdistiller":
            student = [ctx.infos["student"].stages[i].channels
                       for i in self.requests["student"].positions]
            teacher = [ctx.infos["teacher"].stages[i].channels
                       for i in self.requests["teacher"].positions]
            if student != teacher:
                raise ConfigError(f"method kdsvd variant=repdistiller decomposes (H*W) x C "
                                  f"matrices and needs equal channel counts at every stage, got "
                                  f"student {student} and teacher {teacher}; use "
                                  "variant=mdistiller")

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        p = self.params
        pairs = self.stage_pairs(features)
        if p.variant == "mdistiller":
            pairs = [match_spatial_size(s, t) for s, t in pairs]
        loss = kdsvd([s for s, _ in pairs], [t for _, t in pairs], k=p.k, variant=p.variant)
        return {"kdsvd": self.params.weight * loss}
