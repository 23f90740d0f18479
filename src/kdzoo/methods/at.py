"""Attention transfer (AT): match the students' spatial attention maps to the teacher's."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from .. import functional as KF
from ..functional import repdistiller as KR
from ..models.features import FeatureInfo, FeatureRequest, Features
from .base import Method, MethodParams, Step
from .registry import register_method


@dataclass(frozen=True)
class ATParams(MethodParams):
    weight: float = 1000.0
    p: float = 2.0
    variant: Literal["reference", "repdistiller"] = "reference"


@register_method("at")
class AttentionTransfer(Method[ATParams]):
    """Attention transfer: "Paying More Attention to Attention: Improving the Performance of
    Convolutional Neural Networks via Attention Transfer", Zagoruyko & Komodakis, ICLR 2017.

    Reference zoo behaviour (AberHu/Knowledge-Distillation-Zoo@65470c8: kd_losses/at.py): on the
    post-ReLU outputs of the three stages, Q = sum_c |x|^p normalised per sample by (||Q||_2 +
    1e-6), the squared difference averaged over B*H*W (``F.mse_loss``), the three stages averaged:
    loss = weight * (L1 + L2 + L3) / 3, with p = 2 and the example weight 1000. The paper uses the
    p-norm of the difference (not its mean square) and no 1e-6; there is no temperature.

    Networks of other widths need no connector: the attention map sums over channels. Maps of
    other spatial sizes (other strides) are matched by average-pooling the larger one.

    On any network the reference's CIFAR-ResNet stages are its last three stages,
    student and teacher aligned from the end, as RepDistiller pairs cross-family networks.

    ``variant="repdistiller"``: RepDistiller's AT (HobbitLong/RepDistiller@b84f547:
    ``distiller_zoo/AT.py``, ``helper/loops.py``, ``scripts/run_cifar_distill.sh``): on
    ``feat[1:-1]``, the post-ReLU outputs of ALL stages (as many as both networks have, aligned
    from the end; RepDistiller's ``zip`` would align from the start, which differs only for
    networks with different stage counts, a pairing it never makes), each stage's loss
    :func:`kdzoo.functional.repdistiller.repdistiller_attention_transfer` (the channel mean of
    x^p, ``F.normalize``, mean squared difference; the taller map pooled to the other's height)
    and the stages SUMMED (``loss_kd = sum(loss_group)``), times beta = 1000 (``-b 1000``, the
    same default weight), cross-entropy 1, no KD. A network with fewer stages than the other just
    gives fewer terms.
    """

    paper = ("Paying More Attention to Attention: Improving the Performance of Convolutional "
             "Neural Networks via Attention Transfer, Zagoruyko & Komodakis, ICLR 2017")
    url = "https://arxiv.org/abs/1612.03928"
    needs = FeatureRequest.last(3)

    @classmethod
    def feature_requests(cls, params: ATParams,
                         infos: Mapping[str, FeatureInfo]) -> dict[str, FeatureRequest]:
        if params.variant != "repdistiller":
            return super().feature_requests(params, infos)
        return cls.every_stage_requests(infos)

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        if self.params.variant == "repdistiller":
            losses = [KR.repdistiller_attention_transfer(s, t, p=self.params.p)
                      for s, t in self.stage_pairs(features)]
            return {"at": sum(losses) * self.params.weight}
        losses = [KF.attention_transfer(*KF.match_spatial_size(s, t), p=self.params.p)
                  for s, t in self.stage_pairs(features)]
        return {"at": sum(losses) / len(losses) * self.params.weight}
