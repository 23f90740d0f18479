"""AFD: attentive feature distillation, the reference zoo's SE-block variant."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import functional as KF
from ..errors import ConfigError
from ..models.features import FeatureRequest, Features
from .base import Method, MethodContext, MethodParams, Step, positive
from ._feature_maps import conv_bn_connector
from .registry import register_method


class ChannelAttention(nn.Module):
    """rho = sigmoid(conv1x1(C -> C*att_f, bias) -> ReLU -> conv1x1(-> C, bias)) of the teacher's
    globally pooled map, normalised per sample to sum 1 over channels (the reference's ``AFD``
    attention; kaiming fan_out init, biases 0)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.attention = nn.Sequential(nn.Conv2d(channels, hidden, kernel_size=1, bias=True),
                                       nn.ReLU(),
                                       nn.Conv2d(hidden, channels, kernel_size=1, bias=True))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, teacher_map: Tensor) -> Tensor:
        pooled = F.adaptive_avg_pool2d(teacher_map, 1)
        # flatten(1), not the reference's squeeze(): squeeze also drops the batch dimension
        # when B = 1 and the normalisation below then fails (a bug of the reference's
        # kd_losses/afd.py)
        rho = torch.sigmoid(self.attention(pooled).flatten(1))
        return rho / rho.sum(dim=1, keepdim=True)


@dataclass(frozen=True)
class AFDParams(MethodParams):
    weight: float = 500.0
    att_f: float = 1.0

    def check(self, method: str) -> None:
        positive(method, att_f=self.att_f)


@register_method("afd")
class AttentiveFeatureDistillation(Method[AFDParams]):
    """Attentive feature distillation: "Pay Attention to Features, Transfer Learn Faster CNNs",
    Wang, Chen, Xu, Wang & Zhou, ICLR 2020.

    Reference zoo behaviour (AberHu/Knowledge-Distillation-Zoo@65470c8: kd_losses/afd.py): on
    ``stage1``, ``stage2``, ``stage3`` (post-ReLU), a trainable SE-style channel attention rho
    computed from the teacher map (hidden width ``int(C_t * att_f)``, att_f = 1) weights the
    per-channel mean squared difference of the spatially L2-normalised maps; the three stages are
    averaged and multiplied by ``weight`` (500). rho is trained by the same loss, as in the
    reference.

    Reference vs paper: the paper's per-location attention was replaced by an SE block in the
    reference because it was unstable (the README says so). The reference's ``squeeze()``
    breaks for batch size 1; here rho is flattened, so any batch size works.

    Widths: the reference assumes equal teacher and student widths. When they differ at a stage,
    a Conv1x1 (no bias) + BN connector (kaiming fan_out, BN 1/0, train mode with the student)
    maps the student's map to the teacher's width before the normalisation; with equal widths
    there is no connector, exactly as in the reference.

    On any network the reference's CIFAR-ResNet stages are its last three stages,
    student and teacher aligned from the end, as RepDistiller pairs cross-family networks.
    """

    paper = "Pay Attention to Features, Transfer Learn Faster CNNs, Wang et al., ICLR 2020"
    url = "https://openreview.net/forum?id=ryxyCeHtPB"
    needs = FeatureRequest.last(3)

    def __init__(self, ctx: MethodContext, params: AFDParams) -> None:
        super().__init__(ctx, params)
        att_f = self.params.att_f
        attentions, connectors = [], []
        for position in self.requests["student"].positions:
            teacher_ch = ctx.infos["teacher"].stages[position].channels
            student_ch = ctx.infos["student"].stages[position].channels
            hidden = int(teacher_ch * att_f)
            if hidden < 1:
                raise ConfigError(f"method afd: att_f={att_f} leaves no hidden channel for a "
                                  f"teacher stage of {teacher_ch} channels; use a larger value")
            attentions.append(ChannelAttention(teacher_ch, hidden))
            connectors.append(nn.Identity() if student_ch == teacher_ch
                              else conv_bn_connector(student_ch, teacher_ch))
        self.attentions = nn.ModuleList(attentions)
        self.connectors = nn.ModuleList(connectors)

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        losses = []
        pairs = self.stage_pairs(features)
        for attention, connector, (s, t) in zip(self.attentions, self.connectors, pairs):
            s, t = KF.match_spatial_size(s, t)  # other resolutions: pool the larger map
            teacher_map = t.detach()
            rho = attention(teacher_map)
            losses.append(KF.attention_feature_distillation(connector(s), teacher_map, rho))
        return {"afd": self.params.weight * sum(losses) / len(losses)}
