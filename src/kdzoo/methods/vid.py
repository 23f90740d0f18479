"""VID: variational information distillation."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import functional as KF
from ..errors import ConfigError
from ..models.features import FeatureRequest, Features
from .base import Method, MethodContext, MethodParams, Step, positive
from .registry import register_method

#: added to softplus(alpha) so the variance never reaches 0 (the reference's eps)
VARIANCE_EPS = 1e-6


def _conv1x1(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, bias=False)


class VariationalRegressor(nn.Module):
    """The reference's ``VID`` module for one stage: the mean mu(s) = conv1x1 -> ReLU -> conv1x1
    -> ReLU -> conv1x1 (no bias, no BN, kaiming fan_out init) and a per-channel variance
    sigma^2_c = softplus(alpha_c) + 1e-6 with alpha initialised so that sigma^2 = ``init_var``."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, init_var: float) -> None:
        super().__init__()
        self.regressor = nn.Sequential(_conv1x1(in_ch, mid_ch), nn.ReLU(),
                                       _conv1x1(mid_ch, mid_ch), nn.ReLU(),
                                       _conv1x1(mid_ch, out_ch))
        # inverse softplus: softplus(alpha) + eps = init_var
        alpha = math.log(math.expm1(init_var - VARIANCE_EPS))
        self.alpha = nn.Parameter(torch.full((out_ch,), alpha))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def variance(self) -> Tensor:
        return F.softplus(self.alpha) + VARIANCE_EPS

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        return KF.variational_information_loss(self.regressor(student), teacher, self.variance())


@dataclass(frozen=True)
class VIDParams(MethodParams):
    weight: float = 1.0
    init_var: float = 5.0
    hidden_factor: float = 1.0

    def check(self, method: str) -> None:
        if not self.init_var > VARIANCE_EPS:
            raise ConfigError(f"method vid: init_var must be larger than {VARIANCE_EPS}, "
                              f"got {self.init_var}")
        positive(method, hidden_factor=self.hidden_factor)


@register_method("vid")
class VariationalInformationDistillation(Method[VIDParams]):
    """Variational information distillation: "Variational Information Distillation for Knowledge
    Transfer", Ahn, Hu, Damianou, Lawrence & Dai, CVPR 2019.

    Reference zoo behaviour (github.com/AberHu/Knowledge-Distillation-Zoo, kd_losses/vid.py): one
    regressor per stage on ``stage1``, ``stage2``, ``stage3`` (post-ReLU), from the student's width
    to a hidden width ``int(hidden_factor * C_t)`` (the reference's ``--sf``, 1) to the teacher's
    width, so teacher and student of different widths work by construction. Loss per stage: the
    Gaussian negative log-likelihood mean of 0.5 (log sigma^2 + (mu - t)^2 / sigma^2); the three
    stages are averaged and multiplied by ``weight`` (1.0). ``init_var`` = 5.0 is sigma^2 at the
    start.

    Reference vs paper: the regressor has no BatchNorm and its hidden width equals the output
    width (the README admits both); the paper's heteroscedastic variance is per channel as here.

    On any network the reference's CIFAR-ResNet stages are its last three stages,
    student and teacher aligned from the end, as RepDistiller pairs cross-family networks.
    """

    paper = ("Variational Information Distillation for Knowledge Transfer, Ahn et al., "
             "CVPR 2019")
    url = "https://arxiv.org/abs/1904.05835"
    needs = FeatureRequest.last(3)

    def __init__(self, ctx: MethodContext, params: VIDParams) -> None:
        super().__init__(ctx, params)
        p = self.params
        regressors = []
        for position in self.requests["student"].positions:
            teacher_ch = ctx.infos["teacher"].stages[position].channels
            mid_ch = int(p.hidden_factor * teacher_ch)
            if mid_ch < 1:
                raise ConfigError(f"method vid: hidden_factor={p.hidden_factor} leaves no hidden "
                                  f"channel for a teacher stage of {teacher_ch} channels; use a "
                                  "larger value")
            regressors.append(VariationalRegressor(ctx.infos["student"].stages[position].channels,
                                                   mid_ch, teacher_ch, p.init_var))
        self.regressors = nn.ModuleList(regressors)

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        # Maps of other resolutions: the larger is pooled to the smaller, as RepDistiller's VID.
        losses = [regressor(*KF.match_spatial_size(s, t)) for regressor, (s, t) in
                  zip(self.regressors, self.stage_pairs(features))]
        return {"vid": self.params.weight * sum(losses) / len(losses)}
