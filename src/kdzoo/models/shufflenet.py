"""ShuffleNet V1 (Zhang, Zhou, Lin and Sun, "ShuffleNet: An Extremely Efficient Convolutional
Neural Network for Mobile Devices", CVPR 2018) and ShuffleNet V2 (Ma, Zhang, Zheng and Sun,
"ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design", ECCV 2018) for
CIFAR, as RepDistiller builds them (https://github.com/HobbitLong/RepDistiller,
``models/ShuffleNetv1.py`` and ``models/ShuffleNetv2.py``).

``ShuffleV1`` (groups 3, widths 240/480/960, 4/8/4 units: 949,258 parameters with 100 classes)
and ``ShuffleV2`` (width 1x, widths 116/232/464 and a 1024-channel 1x1 convolution, 3/7/3 units:
1,355,528 parameters) keep the reference's CIFAR adaptations: the stem is a single 1x1
convolution to 24 channels with no max pooling, so the three stages have strides 2, 4 and 8.

Changes from RepDistiller: pooling is adaptive (RepDistiller's ``F.avg_pool2d(out, 4)`` is tied to
32x32 inputs; the two are identical on them), so 28x28 and 8x8 inputs work too, and the stem
takes ``in_chans`` input channels (RepDistiller hard-codes 3).

Init, as RepDistiller: PyTorch's default initialisation of every layer (RepDistiller sets none
for the ShuffleNets); modules are created in RepDistiller's order, so a seed gives the same
weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .features import FeatureInfo, FeatureNet, RawFeatures, StageInfo
from .registry import register_model

_STEM_WIDTH = 24


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """[N, g*k, H, W] -> [N, k*g, H, W]: channel ``i*k + j`` moves to ``j*g + i`` (the paper's
    channel shuffle; traceable by torch.fx, unlike code that unpacks ``x.size()``)."""
    if groups == 1:
        return x
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


class ShuffleV1Unit(nn.Module):
    """A ShuffleNet V1 unit: grouped 1x1 convolution, channel shuffle, depthwise 3x3 convolution
    (carrying the stride), grouped 1x1 convolution; the shortcut is added (stride 1) or, at
    stride 2, a 3x3 average pool concatenated after the branch, so the unit adds ``out_ch``
    channels to its ``in_ch``.

    ``forward_with_preact(x)`` also returns the sum or concatenation before the final ReLU
    (RepDistiller's ``preact``), the ReLU then applied out of place. ``forward`` applies that
    ReLU in place: the tensor it overwrites is never a feature, and the add, concatenation and
    BatchNorm backward passes do not use their outputs."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int,
                 group_input: bool = True) -> None:
        super().__init__()
        mid = out_ch // 4
        # RepDistiller does not group the first 1x1 convolution of the network's first unit,
        # whose input is the 24-channel stem (the paper: "the input channels are relatively
        # small"); the shuffle after it is then the identity.
        self.input_groups = groups if group_input else 1
        self.stride = stride
        self.conv1 = nn.Conv2d(in_ch, mid, kernel_size=1, groups=self.input_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, kernel_size=3, stride=stride, padding=1, groups=mid,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_ch, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)

    def preactivation(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = channel_shuffle(out, self.input_groups)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1)
        return out.add_(x)

    def forward_with_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pre = self.preactivation(x)
        return F.relu(pre), pre

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.preactivation(x), inplace=True)


class ShuffleV2Unit(nn.Module):
    """A ShuffleNet V2 basic unit: the channels are split in halves; the second goes through 1x1
    convolution, depthwise 3x3 convolution (no ReLU after it), 1x1 convolution, the first passes
    unchanged; the halves are concatenated and shuffled.

    ``forward_with_preact(x)`` also returns RepDistiller's ``preact``: the concatenation of the
    untouched half with the branch *before* its last ReLU, and *before* the channel shuffle, so
    it is not the stage output with the ReLU undone but a channel permutation of it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2  # RepDistiller's SplitBlock(0.5): int(C * 0.5)
        self.split = half
        self.conv1 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, kernel_size=3, stride=1, padding=1, groups=half,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def _branch(self, x: Tensor) -> tuple[Tensor, Tensor]:
        kept, branch = x[:, :self.split], x[:, self.split:]
        out = F.relu(self.bn1(self.conv1(branch)), inplace=True)
        return kept, self.bn3(self.conv3(self.bn2(self.conv2(out))))

    def forward_with_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        kept, pre = self._branch(x)
        out = channel_shuffle(torch.cat([kept, F.relu(pre)], 1), 2)
        return out, torch.cat([kept, pre], 1)

    def forward(self, x: Tensor) -> Tensor:
        kept, pre = self._branch(x)
        return channel_shuffle(torch.cat([kept, F.relu(pre, inplace=True)], 1), 2)


class ShuffleV2DownUnit(nn.Module):
    """A ShuffleNet V2 spatial down-sampling unit: both branches see the whole input (left:
    depthwise 3x3 stride 2, 1x1; right: 1x1, depthwise 3x3 stride 2, 1x1), each gives
    ``out_ch // 2`` channels; they are concatenated and shuffled."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        mid = out_ch // 2
        self.conv1 = nn.Conv2d(in_ch, in_ch, kernel_size=3, stride=2, padding=1, groups=in_ch,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv2 = nn.Conv2d(in_ch, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_ch, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid,
                               bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))), inplace=True)
        right = F.relu(self.bn3(self.conv3(x)), inplace=True)
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))), inplace=True)
        return channel_shuffle(torch.cat([left, right], 1), 2)


class _ShuffleNet(FeatureNet):
    """Shared stem and features of the two ShuffleNets.

    Features, as RepDistiller's ``forward(is_feat=True, preact=...)``: the stem (1x1 convolution,
    BatchNorm, ReLU), each stage's output (``stages``) and its last unit's pre-activation output
    (``stages_pre``, see the units' ``forward_with_preact``), the pooled feature and the logits.
    RepDistiller's ``get_bn_before_relu`` raises NotImplementedError for the ShuffleNets, so no
    stage names a BatchNorm."""

    classifier_module = "linear"

    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential

    def _head(self, x: Tensor) -> Tensor:
        return x

    def forward_features(self, x: Tensor) -> RawFeatures:
        x = stem = F.relu(self.bn1(self.conv1(x)), inplace=True)
        stages, stages_pre = [], []
        for layer in (self.layer1, self.layer2, self.layer3):
            for unit in layer[:-1]:
                x = unit(x)
            x, pre = layer[-1].forward_with_preact(x)
            stages.append(x)
            stages_pre.append(pre)
        pre_pool = self._head(x)
        pool = F.adaptive_avg_pool2d(pre_pool, 1).flatten(1)
        return {"stem": stem, "stages": stages, "stages_pre": stages_pre, "pre_pool": pre_pool,
                "pool": pool, "logits": self.linear(pool)}


class ShuffleNetV1(_ShuffleNet):
    """RepDistiller's CIFAR ShuffleNet V1: stages of ``blocks`` units reaching ``widths``
    channels, with ``groups`` groups in the 1x1 convolutions; each stage starts with a stride-2
    unit whose branch gives ``width - in_ch`` channels, concatenated to the pooled input."""

    def __init__(self, widths: tuple[int, int, int] = (240, 480, 960),
                 blocks: tuple[int, int, int] = (4, 8, 4), groups: int = 3,
                 num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, _STEM_WIDTH, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STEM_WIDTH)
        in_ch = _STEM_WIDTH
        layers = []
        for index, (width, count) in enumerate(zip(widths, blocks)):
            units = [ShuffleV1Unit(in_ch, width - in_ch, 2, groups, group_input=index > 0)]
            units += [ShuffleV1Unit(width, width, 1, groups) for _ in range(count - 1)]
            layers.append(nn.Sequential(*units))
            in_ch = width
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(in_ch, num_classes)
        self.feature_info = FeatureInfo(
            stages=tuple(StageInfo(w, 2 ** (i + 1), preact=True) for i, w in enumerate(widths)),
            pool=in_ch, logits=num_classes, stem=StageInfo(_STEM_WIDTH, 1), pre_pool=in_ch)


class ShuffleNetV2(_ShuffleNet):
    """RepDistiller's CIFAR ShuffleNet V2: stages of a down-sampling unit and ``blocks`` basic
    units reaching ``widths`` channels, then a 1x1 convolution to ``head_width`` channels
    (BatchNorm, ReLU) before the pooling."""

    def __init__(self, widths: tuple[int, int, int] = (116, 232, 464),
                 blocks: tuple[int, int, int] = (3, 7, 3), head_width: int = 1024,
                 num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, _STEM_WIDTH, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STEM_WIDTH)
        in_ch = _STEM_WIDTH
        layers = []
        for width, count in zip(widths, blocks):
            units = [ShuffleV2DownUnit(in_ch, width)]
            units += [ShuffleV2Unit(width) for _ in range(count)]
            layers.append(nn.Sequential(*units))
            in_ch = width
        self.layer1, self.layer2, self.layer3 = layers
        self.conv2 = nn.Conv2d(in_ch, head_width, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(head_width)
        self.linear = nn.Linear(head_width, num_classes)
        self.feature_info = FeatureInfo(
            stages=tuple(StageInfo(w, 2 ** (i + 1), preact=True) for i, w in enumerate(widths)),
            pool=head_width, logits=num_classes, stem=StageInfo(_STEM_WIDTH, 1),
            pre_pool=head_width)

    def _head(self, x: Tensor) -> Tensor:
        return F.relu(self.bn2(self.conv2(x)), inplace=True)


@register_model("ShuffleV1", family="shufflenet", aliases=("shufflev1",))
def shufflev1(num_classes: int = 10, in_chans: int = 3) -> ShuffleNetV1:
    """RepDistiller's ShuffleV1: groups 3, widths 240/480/960, 4/8/4 units."""
    return ShuffleNetV1(num_classes=num_classes, in_chans=in_chans)


@register_model("ShuffleV2", family="shufflenet", aliases=("shufflev2",))
def shufflev2(num_classes: int = 10, in_chans: int = 3) -> ShuffleNetV2:
    """RepDistiller's ShuffleV2 (net size 1): widths 116/232/464, 3/7/3 units, 1024-channel
    head."""
    return ShuffleNetV2(num_classes=num_classes, in_chans=in_chans)
