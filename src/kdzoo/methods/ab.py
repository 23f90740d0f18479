"""Activation boundaries (AB): make the student's neurons switch on and off where the teacher's
do, in an initialisation stage before ordinary training."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from torch import Tensor, nn

from .. import functional as KF
from ..models.features import FeatureInfo, FeatureRequest, Features
from ._feature_maps import (ConvRegressor, InitParams, InitThenCrossEntropy, averaged_stage_loss,
                            check_init_settings, stage_shape, width_connectors)
from .base import MethodContext, Step
from .registry import register_method

#: RepDistiller's values where they differ from the reference zoo's, given only for
#: hyper-parameters the user leaves unset (HobbitLong/RepDistiller@b84f547): ``ABLoss``'s
#: default margin 1.0 (distiller_zoo/AB.py), ``--init_epochs 30`` and the initialisation at its
#: ``--learning_rate`` 0.05 (train_student.py, helper/pretrain.py; 0.01 for MobileNetV2 and
#: ShuffleNet students comes from a recipe), and weight 1: its loss is used unweighted in the
#: initialisation (its ``-b 1`` multiplies the ``loss_kd = 0`` of the main stage).
REPDISTILLER_DEFAULTS: dict[str, Any] = {"weight": 1.0, "margin": 1.0, "init_epochs": 30,
                                         "init_lr": 0.05}


@dataclass(frozen=True)
class ABParams(InitParams):
    weight: float = 10.0
    margin: float = 2.0
    init_epochs: int = 50
    init_lr: float = 0.01
    variant: Literal["reference", "repdistiller"] = "reference"
    variant_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "repdistiller": REPDISTILLER_DEFAULTS}

    def check(self, method: str) -> None:
        check_init_settings(method, self.init_epochs, self.init_lr)


@register_method("ab")
class ActivationBoundary(InitThenCrossEntropy[ABParams]):
    """Activation boundaries: "Knowledge Transfer via Distillation of Activation Boundaries Formed
    by Hidden Neurons", Heo, Lee, Yun & Choi, AAAI 2019.

    Reference zoo behaviour (AberHu/Knowledge-Distillation-Zoo@65470c8: kd_losses/ab.py and
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

    ``variant="repdistiller"``: RepDistiller's AB (HobbitLong/RepDistiller@b84f547:
    distiller_zoo/AB.py, models/util.py ``Connector``/``ConvReg``, train_student.py lines
    227-238, helper/pretrain.py, helper/loops.py):

    * on ``feat[1:-1]`` with ``preact=True``: the pre-ReLU outputs of ALL stages (as many as
      both networks have, aligned from the end); the student's map goes through RepDistiller's
      ``Connector``: nothing where channels and height equal the teacher's, else its
      ``ConvReg`` without ReLU (:class:`~kdzoo.methods._feature_maps.ConvRegressor`);
    * loss :func:`kdzoo.functional.repdistiller_activation_boundary`: per stage i of n the sum
      of the same expression with margin m = 1 (``ABLoss``'s default), times 2^(i - n + 1),
      / batch size / (1000 / 3), summed over the stages, times ``weight`` (1: RepDistiller
      uses the loss unweighted there);
    * :func:`~kdzoo.methods._feature_maps.repdistiller_init_then_ce_stages`: 30 epochs of that
      loss alone at the constant lr ``init_lr`` (0.05; 0.01 for MobileNetV2 / ShuffleNet
      students, by recipe) with an optimiser of its own that leaves the classifier untouched,
      then the run's 240 epochs with the cross-entropy only (``-a 0``; ``-b 1`` multiplies the
      main stage's ``loss_kd = 0``) and a new optimiser.
    """

    paper = ("Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden "
             "Neurons, Heo et al., AAAI 2019")
    url = "https://arxiv.org/abs/1811.03233"
    needs = FeatureRequest.last(3, preact=True)

    @classmethod
    def feature_requests(cls, params: ABParams,
                         infos: Mapping[str, FeatureInfo]) -> dict[str, FeatureRequest]:
        if params.variant != "repdistiller":
            return super().feature_requests(params, infos)
        request = FeatureRequest(stages="all", preact=True).resolve(
            *(infos.get(r.name) for r in cls.roles))
        return {role.name: request for role in cls.roles}

    def __init__(self, ctx: MethodContext, params: ABParams) -> None:
        super().__init__(ctx, params)
        if self.params.variant == "repdistiller":
            self.connector = nn.ModuleList()
            for s_position, t_position in zip(self.requests["student"].positions,
                                              self.requests["teacher"].positions):
                s_shape = stage_shape(ctx.infos["student"], s_position, ctx.image_size)
                t_shape = stage_shape(ctx.infos["teacher"], t_position, ctx.image_size)
                self.connector.append(
                    nn.Identity() if s_shape[:2] == t_shape[:2] else
                    ConvRegressor(self.name, s_shape, t_shape, use_relu=False))
        else:
            self.connectors = width_connectors(ctx, self.requests["student"])

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        if self.params.variant == "repdistiller":
            pairs = self.stage_pairs(features)
            loss = KF.repdistiller_activation_boundary(
                [c(s) for c, (s, _) in zip(self.connector, pairs)], [t for _, t in pairs],
                self.params.margin)
            return {"ab": loss * self.params.weight}
        margin = self.params.margin
        loss = averaged_stage_loss(self, self.connectors, features,
                                   lambda s, t: KF.activation_boundary(s, t, margin))
        return {"ab": loss * self.params.weight}
