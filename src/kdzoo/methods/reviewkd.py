"""ReviewKD: attention-based fusion of the student's stages, matched to the teacher's stages and
pooled feature with the hierarchical context loss."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..functional.feature_kd import hierarchical_context_loss
from ..models.features import FeatureInfo, FeatureRequest, Features
from .base import Method, MethodContext, MethodParams, Step, positive
from .registry import register_method


class AttentionBasedFusion(nn.Module):
    """The reference's ``ABF`` for one level: a 1x1 convolution + BatchNorm to ``mid_channel``
    channels; where ``fuse``, the deeper level's residual, nearest-upsampled to this map's size, is
    mixed in with two per-pixel weights (a 1x1 convolution with bias on the concatenation, then a
    sigmoid); the result, nearest-resized to the teacher's size if it differs, is the residual
    passed on, and a 3x3 convolution + BatchNorm of it to ``out_channel`` channels is the output.
    Both bias-free convolutions get ``kaiming_uniform_(a=1)``, the others PyTorch's default."""

    def __init__(self, in_channel: int, mid_channel: int, out_channel: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channel, mid_channel, kernel_size=1, bias=False),
            nn.BatchNorm2d(mid_channel))
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_channel, out_channel, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(out_channel))
        self.att_conv = nn.Sequential(nn.Conv2d(mid_channel * 2, 2, kernel_size=1),
                                      nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: Tensor, residual: Tensor | None,
                out_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """(output at the teacher's size, residual for the next, shallower level)."""
        size = (x.shape[2], x.shape[3])
        x = self.conv1(x)
        if self.att_conv is not None:
            assert residual is not None, "a fusing level needs the deeper level's residual"
            residual = F.interpolate(residual, size, mode="nearest")
            weights = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * weights[:, 0:1] + residual * weights[:, 1:2]
        if size != out_size:
            x = F.interpolate(x, out_size, mode="nearest")
        return self.conv2(x), x


def abf_channels(student: FeatureInfo, teacher: FeatureInfo, positions: tuple[int, ...],
                 max_mid_channel: int = 512) -> tuple[list[int], list[int], int]:
    """(in_channels, out_channels, mid_channel) of the fusion modules, shallowest level first:
    the student's (resp. the teacher's) channels at each requested stage, then its pooled
    feature's; the middle width is min(``max_mid_channel``, the student's pooled width). These
    are the values the reference hard-codes per architecture, e.g. [64, 128, 256, 256] both ways
    for resnet32x4 -> resnet8x4 (mdistiller's cfg defaults) or [240, 480, 960, 960] -> [32, 64,
    128, 128] for wrn_40_2 -> ShuffleV1 (dvlab-research/ReviewKD ``build_review_kd``)."""
    in_channels = [student.stages[p].channels for p in positions] + [student.pool]
    out_channels = [teacher.stages[p].channels for p in positions] + [teacher.pool]
    return in_channels, out_channels, min(max_mid_channel, in_channels[-1])


def warmup_factor(epoch: int, warmup_epochs: int) -> float:
    """The reference's ``min(epoch / warmup_epochs, 1)`` for the 1-based ``epoch`` (1 without a
    warm-up)."""
    return 1.0 if warmup_epochs == 0 else min(epoch / warmup_epochs, 1.0)


@dataclass(frozen=True)
class ReviewKDParams(MethodParams):
    weight: float = 1.0
    warmup_epochs: int = 20
    ce_weight: float = 1.0
    max_mid_channel: int = 512
    student_preact: bool = False

    def check(self, method: str) -> None:
        positive(method, max_mid_channel=self.max_mid_channel)
        if self.weight < 0:
            raise ConfigError(f"method {method}: weight must be 0 or more, got {self.weight}")
        if self.warmup_epochs < 0:
            raise ConfigError(f"method {method}: warmup_epochs must be 0 (no warm-up) or "
                              f"more, got {self.warmup_epochs}")
        if self.ce_weight < 0:
            raise ConfigError(f"method {method}: ce_weight must be 0 or more, got "
                              f"{self.ce_weight}")


@register_method("reviewkd")
class ReviewKD(Method[ReviewKDParams]):
    """Knowledge review: "Distilling Knowledge via Knowledge Review", Chen, Liu, Zhao & Jia,
    CVPR 2021. Reference: megvii-research/mdistiller@a08d46f ``mdistiller/distillers/ReviewKD.py``
    with its defaults in ``mdistiller/engine/cfg.py`` (https://github.com/megvii-research/mdistiller),
    which follows the authors' dvlab-research/ReviewKD@cede6ea ``CIFAR-100/model/reviewkd.py``.

    The student's stage outputs (post-activation; pre-activation with ``student_preact``) and its
    pooled feature (as a 1x1 map) are fused from the deepest level up by attention-based fusion
    modules (:class:`AttentionBasedFusion`): the pooled level has no fusion, every shallower level
    fuses the deeper level's residual. Each output is matched to the teacher's pre-activation
    stage output at the same level (and to the teacher's pooled feature) with the hierarchical
    context loss (:func:`kdzoo.functional.feature_kd.hierarchical_context_loss`), summed over the
    levels: loss = weight * min(epoch / warmup_epochs, 1) * HCL, the epoch 1-based, plus the
    cross-entropy with ``ce_weight``.

    Defaults as mdistiller's cfg: weight 1.0 (``REVIEWKD_WEIGHT``), warm-up 20 epochs,
    ``ce_weight`` 1.0, middle width min(512, student's pooled width), student post-activation
    (``STU_PREACT`` False). A ``warmup_epochs`` of 0 (the reference divides by it) means no
    warm-up. The authors' per-pair weights on CIFAR-100 (``CIFAR-100/script/reviewKD.sh``: 5
    for wrn_16_2, wrn_40_1, ShuffleV1 and resnet8x4 students, 8 for ShuffleV2, 0.6 for
    resnet20, 1 for resnet32; mdistiller's ``configs/cifar100/reviewkd.yaml`` also has 5 for
    resnet8x4) are recipes (``configs/recipes/feature-methods.yaml``). Their own training
    protocol (``CIFAR-100/train.py``: batch 128, lr 0.1 or 0.02 for ShuffleNet/MobileNet
    students, Nesterov, drops after epochs 151/181/211, CIFAR-10's normalisation constants) is
    not a recipe; the field-2026 grid sets it for its ReviewKD cell. Their warm-up counts epochs
    from 0, this one from 1 as mdistiller's (``docs/differences.md``, reviewkd-warmup-epoch).

    Levels and sizes come from the networks' metadata instead of the reference's per-architecture
    tables (``IN_CHANNELS``, ``OUT_CHANNELS``, ``SHAPES``, ``OUT_SHAPES``): all stages both
    networks have, aligned from the end (networks with more stages than the other lose their
    first ones, as kdzoo pairs cross-family networks), plus the pooled feature
    (:func:`abf_channels`). For the
    CIFAR networks this gives exactly the reference's values (resnet8x4: [64, 128, 256, 256];
    ShuffleV1: [240, 480, 960, 960]; vgg8: [128, 256, 512, 512, 512]; MobileNetV2: [12, 16, 48,
    160, 1280]; a wrn_40_2 teacher: [32, 64, 128, 128]). The spatial sizes are each map's own
    (the reference's ``SHAPES`` are the student's sizes, e.g. [1, 8, 16, 32], and its
    ``OUT_SHAPES`` the teacher's), read from the tensors rather than configured, so inputs of
    other sizes and non-square maps work too.
    """

    paper = "Distilling Knowledge via Knowledge Review, Chen, Liu, Zhao & Jia, CVPR 2021"
    url = "https://github.com/megvii-research/mdistiller/blob/master/mdistiller/distillers/ReviewKD.py"
    needs = FeatureRequest(stages="all", pool=True)
    teacher_needs = FeatureRequest(stages="all", preact=True, pool=True)

    @classmethod
    def feature_requests(cls, params: ReviewKDParams,
                         infos: Mapping[str, FeatureInfo]) -> dict[str, FeatureRequest]:
        requests = super().feature_requests(params, infos)
        if params.student_preact:
            requests["student"] = replace(requests["student"], preact=True)
        return requests

    def __init__(self, ctx: MethodContext, params: ReviewKDParams) -> None:
        super().__init__(ctx, params)
        positions = self.requests["student"].positions
        in_channels, out_channels, mid = abf_channels(
            ctx.infos["student"], ctx.infos["teacher"], positions, self.params.max_mid_channel)
        last = len(in_channels) - 1
        # Built shallowest first and kept deepest first, as the reference's ``abfs[::-1]``.
        modules = [AttentionBasedFusion(c_in, mid, c_out, index < last)
                   for index, (c_in, c_out) in enumerate(zip(in_channels, out_channels))]
        self.abfs = nn.ModuleList(modules[::-1])

    def review(self, student_levels: list[Tensor], teacher_sizes: list[tuple[int, int]]
               ) -> list[Tensor]:
        """The fused outputs for the student's levels (shallowest first, the pooled feature as a
        1x1 map last), computed from the deepest level up, each at the teacher's size of its
        level; returned shallowest first."""
        outputs: list[Tensor] = []
        residual: Tensor | None = None
        for abf, level, size in zip(self.abfs, student_levels[::-1], teacher_sizes[::-1]):
            out, residual = abf(level, residual, size)
            outputs.insert(0, out)
        return outputs

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        mine, theirs = self.requests["student"], self.requests["teacher"]
        student, teacher = features["student"], features["teacher"]
        assert student.pool is not None and teacher.pool is not None
        student_levels = [*student.maps(mine.positions, mine.preact),
                          student.pool[:, :, None, None]]
        teacher_levels = [*teacher.maps(theirs.positions, theirs.preact),
                          teacher.pool[:, :, None, None]]
        outputs = self.review(student_levels, [(t.shape[2], t.shape[3]) for t in teacher_levels])
        factor = warmup_factor(step.epoch, self.params.warmup_epochs)
        return {"reviewkd": self.params.weight * factor *
                hierarchical_context_loss(outputs, teacher_levels)}
