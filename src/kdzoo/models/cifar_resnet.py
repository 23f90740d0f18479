"""CIFAR ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016), as the
reference zoo and RepDistiller build them.

Differences from the paper, kept for fidelity to the zoos
(github.com/AberHu/Knowledge-Distillation-Zoo, kd_losses/):

* where a block changes the shape, the shortcut is a 1x1 convolution + BatchNorm projection
  (He et al.'s option B), not option A's zero padding: resnet20 has 272,474 parameters, not 269,722;
* pooling is adaptive (identical to ``AvgPool2d(8)`` on 32x32 inputs), so 28x28 (Fashion-MNIST)
  and 8x8 (digits) inputs work too;
* convolutions get kaiming-normal (fan_out, relu) init, BatchNorm weight 1 / bias 0, the linear
  layer keeps PyTorch's default init.

``resnet{8,14,20,32,44,56,110}`` use widths 16/16/32/64 (stem/stages). ``resnet8x4`` and
``resnet32x4`` are RepDistiller's 4x wider variants: 32/64/128/256.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .features import FeatureInfo, FeatureNet, RawFeatures, StageInfo
from ._init import init_weights
from .registry import register_model


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection.

    ``preactivation(x)`` returns the sum before the final ReLU: the reference zoo's ``pout``,
    used by AB and OFD. The ops done in place (the inner ReLU, the residual add, the final ReLU
    of ``forward``) only touch tensors that are never feature points: the network captures a
    stage's last ``preactivation`` and applies that block's ReLU out of place. In-place ops save
    ~8% of a CPU training step (less memory traffic); autograd needs none of the overwritten
    values (BatchNorm and add backward do not use their outputs)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        # Registration order (conv1, downsample, bn1, conv2, bn2) follows the reference zoo, whose
        # init loop visits modules in this order.
        self.conv1 = _conv3x3(in_ch, out_ch, stride)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = _conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)

    def preactivation(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out.add_(shortcut)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.preactivation(x), inplace=True)


class CifarResNet(FeatureNet):
    """A three-stage CIFAR ResNet of BasicBlocks.

    Features as RepDistiller's ``forward(is_feat=True, preact=...)``: the stem after its ReLU,
    each stage's output after (``stages``) and before (``stages_pre``) the last block's final
    ReLU, the pooled feature and the logits; the BatchNorm before each stage's last ReLU is that
    block's ``bn2`` (``get_bn_before_relu``)."""

    def __init__(
        self,
        blocks_per_stage: int,
        widths: tuple[int, int, int, int],
        num_classes: int = 10,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        stem_width, *stage_widths = widths
        self.conv1 = _conv3x3(in_chans, stem_width)
        self.bn1 = nn.BatchNorm2d(stem_width)
        in_ch = stem_width
        stages = []
        for index, width in enumerate(stage_widths):
            stride = 1 if index == 0 else 2
            blocks = [BasicBlock(in_ch, width, stride)]
            blocks += [BasicBlock(width, width, 1) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            in_ch = width
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(in_ch, num_classes)
        last = blocks_per_stage - 1
        self.feature_info = FeatureInfo(
            stages=tuple(StageInfo(width, 2**index, preact=True,
                                   bn_before_relu=f"layer{index + 1}.{last}.bn2")
                         for index, width in enumerate(stage_widths)),
            pool=in_ch, logits=num_classes, stem=StageInfo(stem_width, 1), pre_pool=in_ch)

        init_weights(self)

    def forward_features(self, x: Tensor) -> RawFeatures:
        x = stem = F.relu(self.bn1(self.conv1(x)), inplace=True)
        stages, stages_pre = [], []
        for stage in (self.layer1, self.layer2, self.layer3):
            for block in stage[:-1]:
                x = block(x)
            pre = stage[-1].preactivation(x)
            x = F.relu(pre)  # out of place: ``pre`` is a feature
            stages_pre.append(pre)
            stages.append(x)
        pool = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return {"stem": stem, "stages": stages, "stages_pre": stages_pre, "pre_pool": x,
                "pool": pool, "logits": self.fc(pool)}


_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


def _define(name: str, blocks_per_stage: int, widths: tuple[int, int, int, int]) -> None:
    depth = 6 * blocks_per_stage + 2

    def factory(num_classes: int = 10, in_chans: int = 3) -> CifarResNet:
        return CifarResNet(blocks_per_stage, widths, num_classes=num_classes, in_chans=in_chans)

    factory.__name__ = name
    factory.__doc__ = (
        f"CIFAR ResNet-{depth}: {blocks_per_stage} BasicBlocks per stage, "
        f"widths {'/'.join(map(str, widths))}."
    )
    register_model(name, family="cifar-resnet")(factory)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _define(f"resnet{_depth}", (_depth - 2) // 6, _NARROW)
_define("resnet8x4", 1, _WIDE)
_define("resnet32x4", 5, _WIDE)
