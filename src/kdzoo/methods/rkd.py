"""Relational knowledge distillation (RKD): match the batch's distances and angles."""
from __future__ import annotations

from torch import Tensor

from .. import functional as KF
from ..models.features import Feats
from .base import Method, MethodContext, Step
from .registry import register_method


@register_method("rkd")
class RelationalKD(Method):
    """Relational knowledge distillation: "Relational Knowledge Distillation", Park, Kim, Lu &
    Cho, CVPR 2019.

    Reference zoo behaviour (kd_losses/rkd.py, seed-zoo.md 2.10), on the pooled features:
    weight * (w_dist * L_dist + w_angle * L_angle), where L_dist is the smooth-L1 (mean over
    B^2) between distance matrices divided by their mean positive distance, and L_angle the
    smooth-L1 (mean over B^3) between the cosines of the angles formed by every triplet.
    Defaults: weight 1 (the example script's lambda), w_dist 25, w_angle 50, as the paper.
    The two parts are logged as separate terms (``rkd_distance``, ``rkd_angle``); their sum is
    the reference loss. No connector: the relations do not depend on the feature widths.
    """

    paper = "Relational Knowledge Distillation, Park, Kim, Lu & Cho, CVPR 2019"
    url = "https://arxiv.org/abs/1904.05068"
    points = ("pool",)

    def __init__(self, ctx: MethodContext, weight: float = 1.0, w_dist: float = 25.0,
                 w_angle: float = 50.0) -> None:
        super().__init__(ctx)
        self.weight = weight
        self.w_dist = w_dist
        self.w_angle = w_angle

    def forward(self, student: Feats, teacher: Feats | None, step: Step) -> dict[str, Tensor]:
        assert teacher is not None
        s, t = student["pool"], teacher["pool"]
        terms: dict[str, Tensor] = {}
        if self.w_dist:
            terms["rkd_distance"] = self.weight * self.w_dist * KF.rkd_distance(s, t)
        if self.w_angle:  # the B^3 angle tensor is the expensive part: skip it when unused
            terms["rkd_angle"] = self.weight * self.w_angle * KF.rkd_angle(s, t)
        return terms
