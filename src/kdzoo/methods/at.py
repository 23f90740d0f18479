"""Attention transfer (AT): match the students' spatial attention maps to the teacher's."""
from __future__ import annotations

from dataclasses import dataclass
from torch import Tensor

from .. import functional as KF
from ..models.features import FeatureRequest, Features
from .base import Method, MethodParams, Step
from .registry import register_method


@register_method("at")
class AttentionTransfer(Method):
    """Attention transfer: "Paying More Attention to Attention: Improving the Performance of
    Convolutional Neural Networks via Attention Transfer", Zagoruyko & Komodakis, ICLR 2017.

    Reference zoo behaviour (kd_losses/at.py, seed-zoo.md 2.3): on the post-ReLU outputs of the
    three stages, Q = sum_c |x|^p normalised per sample by (||Q||_2 + 1e-6), the squared
    difference averaged over B*H*W (``F.mse_loss``), the three stages averaged:
    loss = weight * (L1 + L2 + L3) / 3, with p = 2 and the example weight 1000. The paper uses the
    p-norm of the difference (not its mean square) and no 1e-6; there is no temperature.

    Networks of other widths need no connector: the attention map sums over channels. Maps of
    other spatial sizes (other strides) are matched by average-pooling the larger one.

    On any network the reference's CIFAR-ResNet stages are its last three stages,
    student and teacher aligned from the end, as RepDistiller pairs cross-family networks.
    """

    paper = ("Paying More Attention to Attention: Improving the Performance of Convolutional "
             "Neural Networks via Attention Transfer, Zagoruyko & Komodakis, ICLR 2017")
    url = "https://arxiv.org/abs/1612.03928"
    needs = FeatureRequest.last(3)

    @dataclass
    class Params(MethodParams):
        weight: float = 1000.0
        p: float = 2.0

    def forward(self, student: Features, teacher: Features | None,
                step: Step) -> dict[str, Tensor]:
        assert teacher is not None
        losses = [KF.attention_transfer(*KF.match_spatial_size(s, t), p=self.params.p)
                  for s, t in self.stage_pairs(student, teacher)]
        return {"at": sum(losses) / len(losses) * self.params.weight}
