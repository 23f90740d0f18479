"""ICKD: inter-channel correlation of the last stage, after a student embedding."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor, nn

from ..errors import ConfigError
from ..functional.feature_kd import inter_channel_correlation
from ..models.features import FeatureRequest, Features
from .base import Method, MethodContext, MethodParams, Step
from .registry import register_method


class ChannelEmbed(nn.Module):
    """ICKD's ``Embed``: a bias-free 1x1 convolution to the teacher's width and a BatchNorm
    (the reference names it ``l2norm`` but it is ``nn.BatchNorm2d``), PyTorch's default init."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv2d = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0,
                                bias=False)
        self.l2norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.l2norm(self.conv2d(x))


@dataclass(frozen=True)
class ICKDParams(MethodParams):
    weight: float = 2.5
    ce_weight: float = 1.0

    def check(self, method: str) -> None:
        if self.weight < 0 or self.ce_weight < 0:
            raise ConfigError(f"method {method}: weight and ce_weight must be 0 or more, got "
                              f"{self.weight} and {self.ce_weight}")


@register_method("ickd")
class InterChannelCorrelation(Method[ICKDParams]):
    """Inter-channel correlation: "Exploring Inter-Channel Correlation for Diversity-Preserved
    Knowledge Distillation", Liu, Huang, Lin, Xie, Wang, Chang & Liang, ICCV 2021. Reference:
    ADLab-AutoDrive/ICKD (https://github.com/ADLab-AutoDrive/ICKD), ``Cifar100/distiller_zoo/
    ICKD.py``, ``Cifar100/train_student.py`` and ``Cifar100/helper/loops.py`` (RepDistiller's
    framework).

    On the post-activation output of the last stage (RepDistiller's ``feat[-2]``), the student's
    map goes through :class:`ChannelEmbed` (1x1 convolution + BatchNorm from the student's width
    to the teacher's, ``opt.feat_dim = t_dim``; trained with the student), and
    loss = weight * ICC(embedded student map, teacher map)
    (:func:`kdzoo.functional.feature_kd.inter_channel_correlation`), plus the cross-entropy with
    ``ce_weight`` (``-r``, 1) and no KL term (``-a 0``: "ICKD-C w/o KL").

    Default weight 2.5: the ``-b`` of ``Cifar100/README.md``'s command, of
    ``Cifar100/scripts/run_cifar_distill.sh`` and of ``Cifar100/train_student.sh`` at commit
    107935f3; the ``train_student.sh`` of commit 403b8d3d runs ``-b 4`` instead. The
    ``ICKD.py`` of commit 403b8d3d also builds an ``embed_t`` that is never used nor trained
    (commit 04e1d3e1 has none); kdzoo leaves it out. The Gram matrices are C x C, so student
    and teacher maps may have different spatial sizes (other strides) without pooling.
    """

    paper = ("Exploring Inter-Channel Correlation for Diversity-Preserved Knowledge Distillation, "
             "Liu et al., ICCV 2021")
    url = "https://github.com/ADLab-AutoDrive/ICKD"
    needs = FeatureRequest.last(1)

    def __init__(self, ctx: MethodContext, params: ICKDParams) -> None:
        super().__init__(ctx, params)
        position = self.requests["student"].positions[-1]
        self.embed_s = ChannelEmbed(ctx.infos["student"].stages[position].channels,
                                    ctx.infos["teacher"].stages[position].channels)

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        (s, t), = self.stage_pairs(features)
        return {"ickd": self.params.weight * inter_channel_correlation(self.embed_s(s), t)}
