"""Activation boundaries (AB): make the student's neurons switch on and off where the teacher's
do, in an initialisation stage before ordinary training."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from .. import functional as KF
from ..models.features import FeatureRequest, Features
from ._feature_maps import (InitParams, InitThenCrossEntropy, averaged_stage_loss,
                            check_init_settings, width_connectors)
from .base import MethodContext, Step
from .registry import register_method


@dataclass(frozen=True)
class ABParams(InitParams):
    weight: float = 10.0
    margin: float = 2.0
    init_epochs: int = 50
    init_lr: float = 0.01

    def check(self, method: str) -> None:
        check_init_settings(method, self.init_epochs, self.init_lr)


@register_method("ab")
class ActivationBoundary(InitThenCrossEntropy[ABParams]):
    """Activation boundaries: "Knowledge Transfer via Distillation of Activation Boundaries Formed
    by Hidden Neurons", Heo, Lee, Yun & Choi, AAAI 2019.

    Reference zoo behaviour (github.com/AberHu/Knowledge-Distillation-Zoo, kd_losses/ab.py and
    train_kd.py):

    * On the pre-ReLU outputs of the three stages (after the residual add),
      mean[(s + m)^2 1(s > -m, t <= 0) + (s - m)^2 1(s <= m, t > 0)] over all elements with
      margin m = 2; loss = weight * (L1 + L2 + L3) / 3 with the example weight 10. The original
      code sums, divides by the batch size and 1000/3 and weights the layers by powers of two.
    * Two stages, as FSP: ``init_epochs`` (50) epochs of the AB loss alone (cross-entropy kept
      with weight 0, so the classifier still gets zero gradients and weight decay) at lr
      ``init_lr`` /10 /100 for 60% / 20% / 20% of them (0.01 / 0.001 / 0.0001 for 30 / 10 / 10),
      without evaluation, sharing the main stage's SGD optimiser and its momentum; then the
      configured run with the cross-entropy only (the paper's second stage adds soft targets; the
      reference's README says it uses CE only).

    The reference has no connector because its widths agree. At a point where the student's
    channel count differs from the teacher's, a 1x1 convolution + BatchNorm connector (as in
    Heo et al.'s code and RepDistiller's ``Connector``) maps the student's pre-activation to the
    teacher's width; it is trained in the initialisation stage. Maps of other spatial sizes are
    average-pooled to the smaller one.

    On any network the reference's CIFAR-ResNet stages are the pre-activation outputs of its last
    three stages, student and teacher aligned from the end, as RepDistiller pairs cross-family
    networks.
    """

    paper = ("Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden "
             "Neurons, Heo et al., AAAI 2019")
    url = "https://arxiv.org/abs/1811.03233"
    needs = FeatureRequest.last(3, preact=True)

    def __init__(self, ctx: MethodContext, params: ABParams) -> None:
        super().__init__(ctx, params)
        self.connectors = width_connectors(ctx, self.requests["student"])

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        margin = self.params.margin
        loss = averaged_stage_loss(self, self.connectors, features,
                                   lambda s, t: KF.activation_boundary(s, t, margin))
        return {"ab": loss * self.params.weight}
