"""Similarity-preserving distillation (SP): match the batch's pairwise similarity structure."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from .. import functional as KF
from ..models.features import FeatureInfo, FeatureRequest, Features
from .base import Method, MethodParams, Step
from .registry import register_method


@dataclass(frozen=True)
class SPParams(MethodParams):
    weight: float = 3000.0
    variant: Literal["reference", "repdistiller"] = "reference"


@register_method("sp")
class SimilarityPreserving(Method[SPParams]):
    """Similarity-preserving knowledge distillation: "Similarity-Preserving Knowledge
    Distillation", Tung & Mori, ICCV 2019.

    Reference zoo behaviour (AberHu/Knowledge-Distillation-Zoo@65470c8: kd_losses/sp.py): for
    the post-ReLU outputs of the three stages, G = x x^T over the flattened maps (B x B), rows
    L2-normalised, loss = mean over B^2 of (G_s - G_t)^2; the stages are averaged: weight * (L1 +
    L2 + L3) / 3 with the example weight 3000. The paper sums the per-layer losses (each already
    /B^2).

    No connector is ever needed: the B x B matrices do not depend on channels or map sizes.

    On any network the reference's CIFAR-ResNet stages are its last three stages,
    student and teacher aligned from the end, as RepDistiller pairs cross-family networks.

    ``variant="repdistiller"``: RepDistiller's SP (HobbitLong/RepDistiller@b84f547:
    ``distiller_zoo/SP.py``, ``helper/loops.py``, ``scripts/run_cifar_distill.sh``): the same
    formula (sum of (G_t - G_s)^2 / B^2 with row-normalised Gram matrices, which is the mean) on
    ``feat[-2]`` only, the post-ReLU output of the LAST stage, times beta = 3000 (``-b 3000``,
    the same default weight), cross-entropy 1, no KD.
    """

    paper = "Similarity-Preserving Knowledge Distillation, Tung & Mori, ICCV 2019"
    url = "https://arxiv.org/abs/1907.09682"
    needs = FeatureRequest.last(3)

    @classmethod
    def feature_requests(cls, params: SPParams,
                         infos: Mapping[str, FeatureInfo]) -> dict[str, FeatureRequest]:
        if params.variant != "repdistiller":
            return super().feature_requests(params, infos)
        return {role.name: FeatureRequest.last(1) for role in cls.roles}

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        losses = [KF.similarity_preserving(s, t) for s, t in self.stage_pairs(features)]
        if self.params.variant == "repdistiller":  # its one stage's loss, not a mean
            return {"sp": sum(losses) * self.params.weight}
        return {"sp": sum(losses) / len(losses) * self.params.weight}
