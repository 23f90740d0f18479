"""ResNet-50 (He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition", CVPR 2016)
for CIFAR, as RepDistiller builds it (https://github.com/HobbitLong/RepDistiller,
``models/resnetv2.py``, ``ResNet50``): 23,705,252 parameters with 100 classes.

The ImageNet network's four stages of Bottleneck blocks (3/4/6/3 blocks, widths 64/128/256/512,
expansion 4), with RepDistiller's CIFAR stem: one 3x3 stride-1 convolution to 64 channels and no
max pooling, so the stages have strides 1, 2, 4 and 8 (a 4x4 last map on 32x32 inputs). The
stride sits on each block's 3x3 convolution, and a shortcut that changes the shape is a 1x1
convolution + BatchNorm projection (``shortcut.0``, ``shortcut.1``).

RepDistiller already pools adaptively here, so 28x28 and 8x8 inputs work as they are; the one
change is ``in_chans`` input channels (RepDistiller hard-codes 3).

Init, as RepDistiller (without its unused ``zero_init_residual``): convolutions kaiming-normal
(fan_out, relu), BatchNorm weight 1 and bias 0, the linear layer PyTorch's default.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .features import FeatureInfo, FeatureNet, RawFeatures, StageInfo
from ._init import init_weights
from .registry import register_model


class Bottleneck(nn.Module):
    """1x1 reduction, 3x3 (carrying the stride), 1x1 expansion to ``4 * planes``, plus the
    shortcut.

    ``preactivation(x)`` returns the sum before the final ReLU (RepDistiller's ``preact``). The
    in-place ops (inner ReLUs, the residual add, ``forward``'s final ReLU) touch only tensors
    that are never features: the network applies a stage's last ReLU out of place."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = self.expansion * planes
        self.conv1 = nn.Conv2d(in_ch, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )

    def preactivation(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        return self.bn3(self.conv3(out)).add_(self.shortcut(x))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.preactivation(x), inplace=True)


class ResNetBottleneck(FeatureNet):
    """A four-stage CIFAR ResNet of Bottleneck blocks (``blocks`` per stage).

    Features, as RepDistiller's ``forward(is_feat=True, preact=...)``: the stem after its ReLU,
    each stage's output after (``stages``) and before (``stages_pre``) the last block's final
    ReLU, the pooled feature and the logits; the BatchNorm before each stage's last ReLU is that
    block's ``bn3`` (``get_bn_before_relu``)."""

    classifier_module = "linear"

    def __init__(self, blocks: tuple[int, int, int, int] = (3, 4, 6, 3), num_classes: int = 10,
                 in_chans: int = 3) -> None:
        super().__init__()
        stem_width = 64
        self.conv1 = nn.Conv2d(in_chans, stem_width, kernel_size=3, stride=1, padding=1,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        in_ch = stem_width
        layers, stages = [], []
        for index, count in enumerate(blocks):
            planes = stem_width * 2 ** index
            stride = 1 if index == 0 else 2
            units = [Bottleneck(in_ch, planes, stride)]
            in_ch = planes * Bottleneck.expansion
            units += [Bottleneck(in_ch, planes) for _ in range(count - 1)]
            layers.append(nn.Sequential(*units))
            stages.append(StageInfo(in_ch, 2 ** index, preact=True,
                                    bn_before_relu=f"layer{index + 1}.{count - 1}.bn3"))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(in_ch, num_classes)
        self.feature_info = FeatureInfo(stages=tuple(stages), pool=in_ch, logits=num_classes,
                                        stem=StageInfo(stem_width, 1), pre_pool=in_ch)

        init_weights(self)

    def forward_features(self, x: Tensor) -> RawFeatures:
        x = stem = F.relu(self.bn1(self.conv1(x)), inplace=True)
        stages, stages_pre = [], []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer[:-1]:
                x = block(x)
            pre = layer[-1].preactivation(x)
            x = F.relu(pre)  # out of place: ``pre`` is a feature
            stages_pre.append(pre)
            stages.append(x)
        pool = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return {"stem": stem, "stages": stages, "stages_pre": stages_pre, "pre_pool": x,
                "pool": pool, "logits": self.linear(pool)}


@register_model("ResNet50", family="resnet-bottleneck", aliases=("resnet50",))
def resnet50(num_classes: int = 10, in_chans: int = 3) -> ResNetBottleneck:
    """RepDistiller's ResNet50: 3/4/6/3 Bottleneck blocks, widths 256/512/1024/2048."""
    return ResNetBottleneck((3, 4, 6, 3), num_classes=num_classes, in_chans=in_chans)
