"""VID: variational information distillation."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import functional as KF
from ..errors import ConfigError
from ..functional import repdistiller as KR
from ..models.features import FeatureInfo, FeatureRequest, Features
from .base import Method, MethodContext, MethodParams, Step, positive
from .registry import register_method

#: added to softplus(alpha) so the variance never reaches 0 (the reference zoo's eps)
VARIANCE_EPS = 1e-6
#: RepDistiller's ``VIDLoss`` eps (HobbitLong/RepDistiller@b84f547:distiller_zoo/VID.py)
REPDISTILLER_VARIANCE_EPS = 1e-5


def _conv1x1(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, bias=False)


class VariationalRegressor(nn.Module):
    """The reference zoo's ``VID`` module for one stage: the mean mu(s) = conv1x1 -> ReLU ->
    conv1x1 -> ReLU -> conv1x1 (no bias, no BN, kaiming fan_out init) and a per-channel variance
    sigma^2_c = softplus(alpha_c) + ``eps`` with alpha initialised so that sigma^2 =
    ``init_var``. ``reference_init=False`` keeps PyTorch's default convolution init, as
    RepDistiller's ``VIDLoss`` (whose eps is 1e-5; the reference zoo's 1e-6)."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, init_var: float,
                 eps: float = VARIANCE_EPS, reference_init: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.regressor = nn.Sequential(_conv1x1(in_ch, mid_ch), nn.ReLU(),
                                       _conv1x1(mid_ch, mid_ch), nn.ReLU(),
                                       _conv1x1(mid_ch, out_ch))
        # inverse softplus: softplus(alpha) + eps = init_var
        alpha = math.log(math.expm1(init_var - eps))
        self.alpha = nn.Parameter(torch.full((out_ch,), alpha))
        if reference_init:
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def variance(self) -> Tensor:
        return F.softplus(self.alpha) + self.eps

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        return KF.variational_information_loss(self.regressor(student), teacher, self.variance())


@dataclass(frozen=True)
class VIDParams(MethodParams):
    weight: float = 1.0
    init_var: float = 5.0
    hidden_factor: float = 1.0
    variant: Literal["reference", "repdistiller"] = "reference"

    def check(self, method: str) -> None:
        eps = REPDISTILLER_VARIANCE_EPS if self.variant == "repdistiller" else VARIANCE_EPS
        if not self.init_var > eps:
            raise ConfigError(f"method vid: init_var must be larger than {eps}, "
                              f"got {self.init_var}")
        positive(method, hidden_factor=self.hidden_factor)


@register_method("vid")
class VariationalInformationDistillation(Method[VIDParams]):
    """Variational information distillation: "Variational Information Distillation for Knowledge
    Transfer", Ahn, Hu, Damianou, Lawrence & Dai, CVPR 2019.

    Reference zoo behaviour (AberHu/Knowledge-Distillation-Zoo@65470c8:kd_losses/vid.py): one
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

    ``variant="repdistiller"``: RepDistiller's VID (HobbitLong/RepDistiller@b84f547:
    distiller_zoo/VID.py, train_student.py lines 219-226, helper/loops.py): one ``VIDLoss(s, t,
    t)`` per stage of ``feat[1:-1]``, the post-ReLU outputs of ALL stages (as many as both
    networks have, aligned from the end), hidden width = the teacher's width
    (``hidden_factor`` 1), PyTorch's default convolution init (no kaiming), variance eps 1e-5;
    the taller map is pooled to the other's height before the regressor; the stage losses are
    SUMMED (``loss_kd = sum(loss_group)``), times beta = 1 (``-b 1``, the same default weight),
    cross-entropy 1, no KD.
    """

    paper = ("Variational Information Distillation for Knowledge Transfer, Ahn et al., "
             "CVPR 2019")
    url = "https://arxiv.org/abs/1904.05835"
    needs = FeatureRequest.last(3)

    @classmethod
    def feature_requests(cls, params: VIDParams,
                         infos: Mapping[str, FeatureInfo]) -> dict[str, FeatureRequest]:
        if params.variant != "repdistiller":
            return super().feature_requests(params, infos)
        return cls.every_stage_requests(infos)

    def __init__(self, ctx: MethodContext, params: VIDParams) -> None:
        super().__init__(ctx, params)
        p = self.params
        repdistiller = p.variant == "repdistiller"
        regressors = []
        for position in self.requests["student"].positions:
            teacher_ch = ctx.infos["teacher"].stages[position].channels
            mid_ch = int(p.hidden_factor * teacher_ch)
            if mid_ch < 1:
                raise ConfigError(f"method vid: hidden_factor={p.hidden_factor} leaves no hidden "
                                  f"channel for a teacher stage of {teacher_ch} channels; use a "
                                  "larger value")
            regressors.append(VariationalRegressor(
                ctx.infos["student"].stages[position].channels, mid_ch, teacher_ch, p.init_var,
                eps=REPDISTILLER_VARIANCE_EPS if repdistiller else VARIANCE_EPS,
                reference_init=not repdistiller))
        self.regressors = nn.ModuleList(regressors)

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        if self.params.variant == "repdistiller":
            losses = [regressor(*KR.repdistiller_match_size(s, t)) for regressor, (s, t) in
                      zip(self.regressors, self.stage_pairs(features))]
            return {"vid": self.params.weight * sum(losses[1:], losses[0])}
        # Maps of other resolutions: the larger is pooled to the smaller, as RepDistiller's VID.
        losses = [regressor(*KF.match_spatial_size(s, t)) for regressor, (s, t) in
                  zip(self.regressors, self.stage_pairs(features))]
        return {"vid": self.params.weight * sum(losses) / len(losses)}
