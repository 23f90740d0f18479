"""FitNets: regress the teacher's last-stage feature map (one stage, as the reference zoo)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from .. import functional as KF
from ..errors import ConfigError
from ..models.features import FeatureInfo, FeatureRequest, Features
from ._feature_maps import averaged_stage_loss, width_connectors
from .base import Method, MethodContext, MethodParams, Step
from .registry import register_method

#: RepDistiller's values where they differ from the reference zoo's (``-b 100`` in
#: scripts/run_cifar_distill.sh); given only for hyper-parameters the user leaves unset.
REPDISTILLER_DEFAULTS: dict[str, Any] = {"weight": 100.0}


def stage_shape(info: FeatureInfo, position: int, image_size: int) -> tuple[int, int, int]:
    """(C, H, W) of the stage at ``position`` for square inputs of ``image_size``, from the
    metadata (a stride-2 convolution with padding rounds up)."""
    stage = info.stages[position]
    side = -(-image_size // stage.reduction)
    return stage.channels, side, side


class ConvRegressor(nn.Module):
    """RepDistiller's ``ConvReg`` (models/util.py), which mdistiller's WKD code reuses: a
    convolution chosen by the heights, then BatchNorm and (``use_relu``) ReLU. A student map of
    twice the teacher's height: 3x3 stride 2, padding 1; of half: 4x4 transposed convolution
    stride 2, padding 1; of at least the teacher's height: a (1 + H_s - H_t) x (1 + W_s - W_t)
    convolution (1x1 for equal sizes); anything else is refused. PyTorch's default init, the
    convolution with a bias, as there. Shapes are (C, H, W)."""

    def __init__(self, method: str, student_shape: tuple[int, int, int],
                 teacher_shape: tuple[int, int, int], use_relu: bool = True) -> None:
        super().__init__()
        s_channels, s_height, s_width = student_shape
        t_channels, t_height, t_width = teacher_shape
        self.conv: nn.Module
        if s_height == 2 * t_height:
            self.conv = nn.Conv2d(s_channels, t_channels, kernel_size=3, stride=2, padding=1)
        elif s_height * 2 == t_height:
            self.conv = nn.ConvTranspose2d(s_channels, t_channels, kernel_size=4, stride=2,
                                           padding=1)
        elif s_height >= t_height:
            self.conv = nn.Conv2d(s_channels, t_channels,
                                  kernel_size=(1 + s_height - t_height, 1 + s_width - t_width))
        else:
            raise ConfigError(f"method {method}: RepDistiller's ConvReg cannot map a "
                              f"{s_height}x{s_width} student map to a {t_height}x{t_width} "
                              "teacher map (it handles twice, half or at least the teacher's "
                              "height)")
        self.bn = nn.BatchNorm2d(t_channels)
        self.use_relu = use_relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x) if self.use_relu else x


@register_method("fitnet")
class FitNet(Method):
    """Hints: "FitNets: Hints for Thin Deep Nets", Romero, Ballas, Kahou, Chassang, Gatta &
    Bengio, ICLR 2015.

    Reference zoo behaviour (github.com/AberHu/Knowledge-Distillation-Zoo, kd_losses/fitnet.py):
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

    ``variant="repdistiller"``: RepDistiller's FitNet (github.com/HobbitLong/RepDistiller,
    ``train_student.py --distill hint``, ``helper/loops.py``, ``distiller_zoo/FitNet.py``,
    ``models/util.py``). Its hint is ``feat[--hint_layer]`` with the default 2, in a feature list
    [stem, stage 1, ..., stage K, pooled feature]: the output (post-ReLU) of each network's
    SECOND stage counted from the start (stage -2 of a three-stage CIFAR ResNet, stage -3 of a
    four-stage VGG or MobileNetV2), taken independently in the student and the teacher as its
    index is; networks with a single stage are refused. The student's map always goes through
    RepDistiller's ``ConvReg`` (:class:`ConvRegressor`: convolution + BatchNorm + ReLU, shaped
    from the metadata, even for equal shapes), and the loss is ``nn.MSELoss`` (the mean) times
    beta = 100 (``-b 100``, given as ``weight`` when it is left unset), with the cross-entropy at
    1 (``-r 1``) and no KD (``-a 0``).
    """

    paper = "FitNets: Hints for Thin Deep Nets, Romero et al., ICLR 2015"
    url = "https://arxiv.org/abs/1412.6550"
    needs = FeatureRequest.last(1)

    @dataclass
    class Params(MethodParams):
        weight: float = 0.1
        variant: Literal["reference", "repdistiller"] = "reference"
        variant_defaults: ClassVar[dict[str, dict[str, Any]]] = {
            "repdistiller": REPDISTILLER_DEFAULTS}

    @classmethod
    def feature_requests(cls, params: MethodParams,
                         infos: dict[str, FeatureInfo]) -> dict[str, FeatureRequest]:
        if params.variant != "repdistiller":  # type: ignore[attr-defined]
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

    def __init__(self, ctx: MethodContext, params: MethodParams | None = None) -> None:
        super().__init__(ctx, params)
        if self.params.variant == "repdistiller":
            assert ctx.teacher_info is not None, "fitnet needs a teacher"
            (s_position,), (t_position,) = (self.requests["student"].positions,
                                            self.requests["teacher"].positions)
            self.regressor = ConvRegressor(
                self.name, stage_shape(ctx.student_info, s_position, ctx.image_size),
                stage_shape(ctx.teacher_info, t_position, ctx.image_size))
        else:
            self.connectors = width_connectors(ctx, self.requests["student"])

    def forward(self, student: Features, teacher: Features | None,
                step: Step) -> dict[str, Tensor]:
        assert teacher is not None
        if self.params.variant == "repdistiller":
            ((s, t),) = self.stage_pairs(student, teacher)
            return {"fitnet": self.params.weight * KF.hint(self.regressor(s), t)}
        loss = averaged_stage_loss(self, self.connectors, student, teacher, KF.hint)
        return {"fitnet": loss * self.params.weight}
