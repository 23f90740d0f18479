"""FitNets: regress the teacher's last-stage feature map (one stage, as the reference zoo)."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .. import functional as KF
from ..models.features import FeatureRequest, Features
from ._feature_maps import averaged_stage_loss, width_connectors
from .base import Method, MethodContext, MethodParams, Step
from .registry import register_method


@register_method("fitnet")
class FitNet(Method):
    """Hints: "FitNets: Hints for Thin Deep Nets", Romero, Ballas, Kahou, Chassang, Gatta &
    Bengio, ICLR 2015.

    Reference zoo behaviour (kd_losses/fitnet.py, seed-zoo.md 2.4): one stage, trained together
    with the cross-entropy: loss = weight * mean((s - t)^2) on the post-ReLU output of the last
    stage, with the example weight 0.1. The paper instead trains the student's lower half on the
    hint of a middle layer first (a separate stage, through a convolutional regressor), then the
    whole student with soft targets.

    The reference has no regressor because its widths agree. Here, when the student's channel
    count differs from the teacher's, a 1x1 convolution + BatchNorm regressor (RepDistiller's
    connector style, without ReLU) maps the student's map to the teacher's width, trained with the
    student; equal widths keep the reference's exact behaviour. Maps of other spatial sizes are
    average-pooled to the smaller one.

    On any network the reference's CIFAR-ResNet stages are its last stage,
    student and teacher aligned from the end, as RepDistiller pairs cross-family networks.
    """

    paper = "FitNets: Hints for Thin Deep Nets, Romero et al., ICLR 2015"
    url = "https://arxiv.org/abs/1412.6550"
    needs = FeatureRequest.last(1)

    @dataclass
    class Params(MethodParams):
        weight: float = 0.1

    def __init__(self, ctx: MethodContext, params: MethodParams | None = None) -> None:
        super().__init__(ctx, params)
        self.connectors = width_connectors(ctx, self.requests["student"])

    def forward(self, student: Features, teacher: Features | None,
                step: Step) -> dict[str, Tensor]:
        assert teacher is not None
        loss = averaged_stage_loss(self, self.connectors, student, teacher, KF.hint)
        return {"fitnet": loss * self.params.weight}
