"""Attention transfer (AT): match the students' spatial attention maps to the teacher's."""
from __future__ import annotations

from torch import Tensor

from .. import functional as KF
from ..models.features import Feats
from .base import Method, MethodContext, Step
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
    """

    paper = ("Paying More Attention to Attention: Improving the Performance of Convolutional "
             "Neural Networks via Attention Transfer, Zagoruyko & Komodakis, ICLR 2017")
    url = "https://arxiv.org/abs/1612.03928"
    points = ("stage1", "stage2", "stage3")

    def __init__(self, ctx: MethodContext, weight: float = 1000.0, p: float = 2.0) -> None:
        super().__init__(ctx)
        self.weight = weight
        self.p = p

    def forward(self, student: Feats, teacher: Feats | None, step: Step) -> dict[str, Tensor]:
        assert teacher is not None
        losses = [KF.attention_transfer(*KF.match_spatial_size(student[k], teacher[k]), p=self.p)
                  for k in self.points]
        return {"at": sum(losses) / len(losses) * self.weight}
