"""OFD: a comprehensive overhaul of feature distillation (margin ReLU + partial L2)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal

from torch import Tensor, nn

from .. import functional as KF
from ..errors import ConfigError
from ..models.features import FeatureInfo, FeatureRequest, Features
from ._feature_maps import conv_bn_connector
from ._networks import feature_net
from .base import Method, MethodContext, MethodParams, Step
from .registry import register_method


def teacher_bn_before(teacher: nn.Module, position: int) -> nn.BatchNorm2d:
    """The BatchNorm before the last ReLU of the teacher's stage at ``position``, as the network
    names it (RepDistiller's ``get_bn_before_relu``), for the paper's margin.

    For the post-activation CIFAR ResNets that is the last block's ``bn2``: its output plus the
    shortcut is the pre-activation map, and the official code (clovaai/overhaul-distillation,
    also used by RepDistiller) ignores the shortcut, so the Gaussian of the margin describes the
    residual branch only (an approximation the official code makes too). A network that names
    no such BatchNorm is refused before the run (the request asks for ``bn_before_relu``).
    """
    network = feature_net(teacher)
    name = network.feature_info.stages[position].bn_before_relu
    assert name is not None, "the teacher's request asks for bn_before_relu"
    bn = network.get_submodule(name)
    if not isinstance(bn, nn.BatchNorm2d):
        raise ConfigError(f"method ofd: the teacher's {name} is a {type(bn).__name__}, not the "
                          "BatchNorm2d of the paper's margin; use margin=batch")
    return bn


@dataclass(frozen=True)
class OFDParams(MethodParams):
    weight: float = 0.5
    margin: Literal["batch", "bn"] = "batch"


@register_method("ofd")
class OverhaulFeatureDistillation(Method[OFDParams]):
    """Overhaul of feature distillation: "A Comprehensive Overhaul of Feature Distillation",
    Heo, Kim, Yun, Park, Kwak & Choi, ICCV 2019.

    Reference zoo behaviour (AberHu/Knowledge-Distillation-Zoo@65470c8: kd_losses/ofd.py): on
    ``stage1_pre``, ``stage2_pre``, ``stage3_pre`` (before the last ReLU), the student goes through
    a connector Conv1x1(C_s -> C_t, no bias) + BN (train mode with the student, so batch
    statistics), the teacher through the margin ReLU max(t, m_c), and the partial L2 distance is
    averaged over all elements; the three stages are averaged and multiplied by ``weight`` (0.5).
    The connector maps any student width to the teacher's, so different widths work by
    construction.

    ``margin``: "batch" (default, the reference) is the mean of the teacher's negative responses
    in the current batch, per channel; "bn" is the paper's (and official code's) expectation of
    the negative part of a Gaussian given by the teacher's BatchNorm (weight = std, bias = mean)
    before the point, taken from the last block's ``bn2`` as the official code does for
    post-activation ResNets (:func:`teacher_bn_before`; CIFAR ResNet teachers only).

    Reference vs paper/official code, kept as in the reference (a choice of the reference's code):
    the loss is a mean over all elements, not a sum divided by the batch size, and the stages are
    weighted
    equally instead of by 1/2^(n-i).

    On any network the reference's CIFAR-ResNet stages are the pre-activation outputs of its last
    three stages, student and teacher aligned from the end, as RepDistiller pairs cross-family
    networks.
    """

    paper = "A Comprehensive Overhaul of Feature Distillation, Heo et al., ICCV 2019"
    url = "https://arxiv.org/abs/1904.01866"
    needs = FeatureRequest.last(3, preact=True)

    @classmethod
    def feature_requests(cls, params: OFDParams,
                         infos: Mapping[str, FeatureInfo]) -> dict[str, FeatureRequest]:
        requests = super().feature_requests(params, infos)
        if params.margin == "bn":
            requests["teacher"] = replace(requests["teacher"], bn_before_relu=True)
        return requests

    def __init__(self, ctx: MethodContext, params: OFDParams) -> None:
        super().__init__(ctx, params)
        self.connectors = nn.ModuleList(
            conv_bn_connector(ctx.infos["student"].stages[p].channels,
                              ctx.infos["teacher"].stages[p].channels)
            for p in self.requests["student"].positions)

    def teacher_margin(self, teacher_map: Tensor, position: int, step: Step) -> Tensor:
        if self.params.margin == "batch":
            return KF.ofd_margin_from_batch(teacher_map)
        # The teacher is frozen, so this is constant; recomputing it (C values) costs nothing
        # and needs no state to save or resume.
        bn = teacher_bn_before(step.networks["teacher"], position)
        return KF.ofd_margin_from_bn(bn.weight.detach(), bn.bias.detach()).to(teacher_map.dtype)

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        losses = []
        positions = self.requests["teacher"].positions
        pairs = self.stage_pairs(features)
        for connector, position, (s, t) in zip(self.connectors, positions, pairs):
            s, t = KF.match_spatial_size(s, t)  # other resolutions: pool the larger map
            teacher_map = t.detach()
            margin = self.teacher_margin(teacher_map, position, step)
            losses.append(KF.overhaul_distillation(connector(s), teacher_map, margin))
        return {"ofd": self.params.weight * sum(losses) / len(losses)}
