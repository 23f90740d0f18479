"""OFD: a comprehensive overhaul of feature distillation (margin ReLU + partial L2)."""
from __future__ import annotations

from torch import Tensor, nn

from .. import functional as KF
from ..errors import ConfigError
from ..models.cifar_resnet import CifarResNet
from ..models.features import Feats
from .base import Method, MethodContext, Step
from ._feature_maps import conv_bn_connector
from .registry import register_method

MARGINS = ("batch", "bn")


def teacher_bn_before(teacher: nn.Module, point: str) -> nn.BatchNorm2d:
    """The BatchNorm whose output feeds ``stageK_pre``, for the paper's margin.

    ``stageK_pre`` is ``bn2(conv2(.)) + shortcut`` of the stage's last block. The official code
    (clovaai/overhaul-distillation, ``get_bn_before_relu`` of its post-activation ResNets, also
    used by RepDistiller) takes that block's ``bn2`` and ignores the shortcut; we do the same, so
    the Gaussian of the margin describes the residual branch only (an approximation the official
    code makes too). Only the CIFAR ResNets are supported: other architectures place their BN
    differently.
    """
    if not isinstance(teacher, CifarResNet):
        name = getattr(teacher, "model_name", type(teacher).__name__)
        raise ConfigError(f"method ofd: margin='bn' needs a CIFAR ResNet teacher (its BatchNorm "
                          f"before {point} is known); {name} is not one: use margin='batch'")
    index = int(point[len("stage")])
    return getattr(teacher, f"layer{index}")[-1].bn2


@register_method("ofd")
class OverhaulFeatureDistillation(Method):
    """Overhaul of feature distillation: "A Comprehensive Overhaul of Feature Distillation",
    Heo, Kim, Yun, Park, Kwak & Choi, ICCV 2019.

    Reference zoo behaviour (kd_losses/ofd.py, seed-zoo.md 2.19): on ``stage1_pre``,
    ``stage2_pre``, ``stage3_pre`` (before the last ReLU), the student goes through a connector
    Conv1x1(C_s -> C_t, no bias) + BN (train mode with the student, so batch statistics), the
    teacher through the margin ReLU max(t, m_c), and the partial L2 distance is averaged over all
    elements; the three stages are averaged and multiplied by ``weight`` (0.5). The connector
    maps any student width to the teacher's, so different widths work by construction.

    ``margin``: "batch" (default, the reference) is the mean of the teacher's negative responses
    in the current batch, per channel; "bn" is the paper's (and official code's) expectation of
    the negative part of a Gaussian given by the teacher's BatchNorm (weight = std, bias = mean)
    before the point, taken from the last block's ``bn2`` as the official code does for
    post-activation ResNets (:func:`teacher_bn_before`; CIFAR ResNet teachers only).

    Reference vs paper/official code, kept as in the reference (seed-zoo.md 6b item 7): the loss
    is a mean over all elements, not a sum divided by the batch size, and the stages are weighted
    equally instead of by 1/2^(n-i).
    """

    paper = "A Comprehensive Overhaul of Feature Distillation, Heo et al., ICCV 2019"
    url = "https://arxiv.org/abs/1904.01866"
    points = ("stage1_pre", "stage2_pre", "stage3_pre")

    def __init__(self, ctx: MethodContext, weight: float = 0.5, margin: str = "batch") -> None:
        super().__init__(ctx)
        if margin not in MARGINS:
            raise ConfigError(f"method ofd: margin must be one of {', '.join(MARGINS)}, "
                              f"got '{margin}'")
        assert ctx.teacher_info is not None
        self.weight = weight
        self.margin = margin
        self.connectors = nn.ModuleList(
            conv_bn_connector(ctx.student_info[p].channels, ctx.teacher_info[p].channels)
            for p in self.points)

    def teacher_margin(self, teacher_map: Tensor, point: str, step: Step) -> Tensor:
        if self.margin == "batch":
            return KF.ofd_margin_from_batch(teacher_map)
        assert step.teacher is not None
        # The teacher is frozen, so this is constant; recomputing it (C values) costs nothing
        # and needs no state to save or resume.
        bn = teacher_bn_before(step.teacher, point)
        return KF.ofd_margin_from_bn(bn.weight.detach(), bn.bias.detach()).to(teacher_map.dtype)

    def forward(self, student: Feats | None, teacher: Feats | None,
                step: Step) -> dict[str, Tensor]:
        assert student is not None and teacher is not None
        losses = []
        for connector, point in zip(self.connectors, self.points):
            teacher_map = teacher[point].detach()
            margin = self.teacher_margin(teacher_map, point, step)
            losses.append(KF.overhaul_distillation(connector(student[point]), teacher_map, margin))
        return {"ofd": self.weight * sum(losses) / len(losses)}
