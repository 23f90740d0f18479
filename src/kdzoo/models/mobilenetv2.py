"""MobileNetV2 (Sandler, Howard, Zhu, Zhmoginov and Chen, "MobileNetV2: Inverted Residuals and
Linear Bottlenecks", CVPR 2018) for CIFAR, as RepDistiller builds it
(https://github.com/HobbitLong/RepDistiller, ``models/mobilenetv2.py``, itself taken from
"Knowledge Distillation via Route Constrained Optimization", Jin et al., ICCV 2019).

``MobileNetV2`` is RepDistiller's ``mobile_half`` (expansion 6, width 0.5), the network that
RepDistiller and mdistiller call MobileNetV2: 812,836 parameters with 100 classes. It keeps the
reference's departures from the paper, so that its checkpoints load and its numbers match:

* ReLU, not ReLU6; the expansion 1x1 convolution is kept even where the expansion ratio is 1;
* the stem is a stride-2 3x3 convolution, and the second block group has stride 1 (the paper's
  has 2): the last map of a 32x32 input is 2x2;
* the width multiplier scales the stem and block widths but not the last 1x1 convolution, which
  keeps 1280 channels.

The one change: RepDistiller pools with ``AvgPool2d(input_size // 16, ceil_mode=True)``, tied to
32x32 inputs; kdzoo pools adaptively, which is identical on 32x32 inputs and lets 28x28
(Fashion-MNIST) and 8x8 (digits) inputs through, and takes ``in_chans`` input channels
(RepDistiller hard-codes 3).

Init, as RepDistiller: convolutions ~ N(0, 2 / (k * k * out_channels)) (kaiming normal,
fan_out), BatchNorm weight 1 and bias 0, the linear layer ~ N(0, 0.01^2) with bias 0.
"""
from __future__ import annotations


import torch.nn.functional as F
from torch import Tensor, nn

from .features import FeatureInfo, FeatureNet, RawFeatures, StageInfo
from ._init import init_weights
from .registry import register_model


def _conv_bn_relu(in_ch: int, out_ch: int, kernel_size: int, stride: int) -> nn.Sequential:
    """Convolution, BatchNorm, ReLU (keys ``0.*``, ``1.*`` as RepDistiller's ``conv_bn``)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Expansion 1x1 convolution, depthwise 3x3 convolution (carrying the stride), linear 1x1
    projection; the input is added where the shape is kept.

    ``conv`` is one ``nn.Sequential`` of eight modules as in RepDistiller, so ``conv.7`` is the
    projection's BatchNorm (what ``get_bn_before_relu`` returns). The block ends on that
    BatchNorm (a linear bottleneck): its output has no ReLU, hence no separate pre-activation
    output. The in-place ReLUs act on BatchNorm outputs inside the block only."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_ch * expand_ratio
        self.use_residual = stride == 1 and in_ch == out_ch
        self.conv = nn.Sequential(
            nn.Conv2d(in_ch, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_ch, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_ch),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


#: (expansion ratio or None for the network's T, channels, blocks, stride of the first block),
#: RepDistiller's ``interverted_residual_setting``.
_SETTING = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
            (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1))
#: The block groups whose outputs are RepDistiller's f1..f4.
_STAGE_GROUPS = (1, 2, 4, 6)


class MobileNetV2(FeatureNet):
    """RepDistiller's CIFAR MobileNetV2 with expansion ratio ``expand_ratio`` (RepDistiller's
    ``T``) and width multiplier ``width_mult``.

    Features, as RepDistiller's ``forward(is_feat=True)``: the stem (``conv1``, after its ReLU),
    four stages (the outputs of block groups 1, 2, 4 and 6: ``blocks.1`` ... ``blocks.6``), the
    pooled output of ``conv2`` and the logits. RepDistiller ignores ``preact`` here (``preact=True``
    returns the same tensors), and rightly so: the stages end on a linear bottleneck with no ReLU
    after it, so a stage's output is its own pre-activation output. kdzoo says the same
    (``preact=True``, ``stages_pre`` the very tensors of ``stages``), so methods on
    pre-activation outputs (AB, OFD) serve a MobileNetV2 as RepDistiller and mdistiller do. The
    BatchNorm named for each stage is that group's last projection BatchNorm
    (``blocks.G.<last>.conv.7``), as RepDistiller's ``get_bn_before_relu``."""

    classifier_module = "classifier"

    def __init__(self, expand_ratio: int = 6, width_mult: float = 0.5, num_classes: int = 10,
                 in_chans: int = 3) -> None:
        super().__init__()
        in_ch = int(32 * width_mult)
        stem_width = in_ch
        self.conv1 = _conv_bn_relu(in_chans, in_ch, 3, 2)
        reduction = 2
        self.blocks = nn.ModuleList()
        stages = []
        for index, (ratio, channels, count, stride) in enumerate(_SETTING):
            out_ch = int(channels * width_mult)
            group = []
            for block_stride in [stride] + [1] * (count - 1):
                group.append(InvertedResidual(in_ch, out_ch, block_stride,
                                              expand_ratio if ratio is None else ratio))
                in_ch = out_ch
            self.blocks.append(nn.Sequential(*group))
            reduction *= stride
            if index in _STAGE_GROUPS:
                stages.append(StageInfo(out_ch, reduction, preact=True,
                                        bn_before_relu=f"blocks.{index}.{count - 1}.conv.7"))
        last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(in_ch, last_channel, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(last_channel, num_classes))
        self.feature_info = FeatureInfo(stages=tuple(stages), pool=last_channel,
                                        logits=num_classes, stem=StageInfo(stem_width, 2),
                                        pre_pool=last_channel)

        init_weights(self, linear="normal")

    def forward_features(self, x: Tensor) -> RawFeatures:
        x = stem = self.conv1(x)
        stages = []
        for index, group in enumerate(self.blocks):
            x = group(x)
            if index in _STAGE_GROUPS:
                stages.append(x)
        pre_pool = self.conv2(x)
        pool = F.adaptive_avg_pool2d(pre_pool, 1).flatten(1)
        return {"stem": stem, "stages": stages, "stages_pre": list(stages), "pre_pool": pre_pool,
                "pool": pool, "logits": self.classifier(pool)}


@register_model("MobileNetV2", family="mobilenetv2", aliases=("mobile_half", "mobilenetv2"))
def mobile_half(num_classes: int = 10, in_chans: int = 3) -> MobileNetV2:
    """RepDistiller's ``mobile_half``: MobileNetV2 with expansion 6 and width 0.5."""
    return MobileNetV2(expand_ratio=6, width_mult=0.5, num_classes=num_classes,
                       in_chans=in_chans)
