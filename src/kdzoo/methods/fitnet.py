"""FitNets: regress the teacher's last-stage feature map (one stage, as the reference zoo)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from torch import Tensor

from .. import functional as KF
from ..errors import ConfigError
from ..models.features import FeatureInfo, FeatureRequest, Features
from ._feature_maps import ConvRegressor, averaged_stage_loss, stage_shape, width_connectors
from .base import Method, MethodContext, MethodParams, Step
from .registry import register_method

#: RepDistiller's values where they differ from the reference zoo's (``-b 100`` in
#: scripts/run_cifar_distill.sh); given only for hyper-parameters the user leaves unset.
REPDISTILLER_DEFAULTS: dict[str, Any] = {"weight": 100.0}


@dataclass(frozen=True)
class FitNetParams(MethodParams):
    weight: float = 0.1
    variant: Literal["reference", "repdistiller"] = "reference"
    variant_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "repdistiller": REPDISTILLER_DEFAULTS}


@register_method("fitnet")
class FitNet(Method[FitNetParams]):
    """Hints: "FitNets: Hints for Thin Deep Nets", Romero, Ballas, Kahou, Chassang, Gatta &
    Bengio, ICLR 2015.

    Reference zoo behaviour (AberHu/Knowledge-Distillation-Zoo@65470c8: kd_losses/fitnet.py):
    one stage, trained together with the cross-entropy: loss = weight * mean((s - t)^2) on the
    post-ReLU output of the last stage, with the example weight 0.1. The paper instead trains the
    student's lower half on the hint of a middle layer first (a separate stage, through a
    convolutional regressor), then the whole student with soft targets.

    The reference has no regressor because its widths agree. Here, when the student's channel
    count differs from the teacher's, a 1x1 convolution + BatchNorm regressor (RepDistiller's
    connector style, without ReLU) maps the student's map to the teacher's width, trained with the
    student; equal widths keep the reference's exact behaviour. Maps of other spatial sizes are
    average-pooled to the smaller one.

    On any network the reference's CIFAR-ResNet stages are its last stage,
    student and teacher aligned from the end, as RepDistiller pairs cross-family networks.

    ``variant="repdistiller"``: RepDistiller's FitNet (HobbitLong/RepDistiller@b84f547:
    ``train_student.py --distill hint``, ``helper/loops.py``, ``distiller_zoo/FitNet.py``,
    ``models/util.py``). Its hint is ``feat[--hint_layer]`` with the default 2, in a feature list
    [stem, stage 1, ..., stage K, pooled feature]: the output (post-ReLU) of each network's
    SECOND stage counted from the start (stage -2 of a three-stage CIFAR ResNet, stage -3 of a
    four-stage VGG or MobileNetV2), taken independently in the student and the teacher as its
    index is; networks with a single stage are refused. The student's map always goes through
    RepDistiller's ``ConvReg`` (:class:`~kdzoo.methods._feature_maps.ConvRegressor`:
    convolution + BatchNorm + ReLU, shaped from the metadata, even for equal shapes), and the
    loss is ``nn.MSELoss`` (the mean) times beta = 100 (``-b 100``, given as ``weight`` when it
    is left unset), with the cross-entropy at 1 (``-r 1``) and no KD (``-a 0``).
    """

    paper = "FitNets: Hints for Thin Deep Nets, Romero et al., ICLR 2015"
    url = "https://arxiv.org/abs/1412.6550"
    needs = FeatureRequest.last(1)

    @classmethod
    def feature_requests(cls, params: FitNetParams,
                         infos: Mapping[str, FeatureInfo]) -> dict[str, FeatureRequest]:
        if params.variant != "repdistiller":
            return super().feature_requests(params, infos)
        requests = {}
        for role in cls.roles:
            count = len(infos[role.name].stages)
            if count < 2:
                raise ConfigError(f"method {cls.name} with variant=repdistiller hints at "
                                  f"RepDistiller's feat[2], the second stage, and the "
                                  f"{role.name} has {count} stage; use variant=reference")
            requests[role.name] = FeatureRequest(stages=(1 - count,))
        return requests

    def __init__(self, ctx: MethodContext, params: FitNetParams) -> None:
        super().__init__(ctx, params)
        if self.params.variant == "repdistiller":
            (s_position,), (t_position,) = (self.requests["student"].positions,
                                            self.requests["teacher"].positions)
            self.regressor = ConvRegressor(
                self.name, stage_shape(ctx.infos["student"], s_position, ctx.image_size),
                stage_shape(ctx.infos["teacher"], t_position, ctx.image_size))
        else:
            self.connectors = width_connectors(ctx, self.requests["student"])

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        if self.params.variant == "repdistiller":
            ((s, t),) = self.stage_pairs(features)
            return {"fitnet": self.params.weight * KF.hint(self.regressor(s), t)}
        loss = averaged_stage_loss(self, self.connectors, features, KF.hint)
        return {"fitnet": loss * self.params.weight}
