"""Relational knowledge distillation (RKD): match the batch's distances and angles."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from torch import Tensor

from .. import functional as KF
from ..models.features import FeatureRequest, Features
from .base import Method, MethodParams, Step
from .registry import register_method


@dataclass(frozen=True)
class RKDParams(MethodParams):
    weight: float = 1.0
    w_dist: float = 25.0
    w_angle: float = 50.0


@register_method("rkd")
class RelationalKD(Method[RKDParams]):
    """Relational knowledge distillation: "Relational Knowledge Distillation", Park, Kim, Lu &
    Cho, CVPR 2019.

    Reference zoo behaviour (AberHu/Knowledge-Distillation-Zoo@65470c8: kd_losses/rkd.py), on
    the pooled features: weight * (w_dist * L_dist + w_angle * L_angle), where L_dist is the
    smooth-L1 (mean over B^2) between distance matrices divided by their mean positive distance,
    and L_angle the smooth-L1 (mean over B^3) between the cosines of the angles formed by every
    triplet. Defaults: weight 1 (the example script's lambda), w_dist 25, w_angle 50, as the paper.
    The two parts are logged as separate terms (``rkd_distance``, ``rkd_angle``); their sum is the
    reference loss. No connector: the relations do not depend on the feature widths.
    """

    paper = "Relational Knowledge Distillation, Park, Kim, Lu & Cho, CVPR 2019"
    url = "https://arxiv.org/abs/1904.05068"
    needs = FeatureRequest(pool=True)

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        s, t, p = features["student"].pool, features["teacher"].pool, self.params
        assert s is not None and t is not None
        terms: dict[str, Tensor] = {}
        if p.w_dist:
            terms["rkd_distance"] = p.weight * p.w_dist * KF.rkd_distance(s, t)
        if p.w_angle:  # the B^3 angle tensor is the expensive part: skip it when unused
            terms["rkd_angle"] = p.weight * p.w_angle * KF.rkd_angle(s, t)
        return terms
