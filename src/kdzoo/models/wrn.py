"""Wide Residual Networks (Zagoruyko and Komodakis, "Wide Residual Networks", BMVC 2016) for
CIFAR, as RepDistiller builds them (Tian, Krishnan and Isola, "Contrastive Representation
Distillation", ICLR 2020; https://github.com/HobbitLong/RepDistiller, ``models/wrn.py``).

``wrn_D_k`` has depth D = 6n + 4 (n blocks per stage) and widening factor k: a 3x3 stem
convolution to 16 channels, three stages of n pre-activation basic blocks (He et al., "Identity
Mappings in Deep Residual Networks", ECCV 2016) of widths 16k, 32k and 64k at strides 1, 2, 2,
then BatchNorm-ReLU, global average pooling and a linear classifier. The layers, state-dict keys
(``blockS.layer.N.{bn1,conv1,bn2,conv2,convShortcut}``), parameter counts and the forward pass
are RepDistiller's, so its checkpoints load as they are. Differences:

* ``in_chans`` input channels (RepDistiller hard-codes 3);
* pooling is adaptive: on 32x32 inputs, whose last map is 8x8, it is identical to RepDistiller's
  ``avg_pool2d(out, 8)`` (the same mean; the summation order may differ in the last bit), and
  28x28 and 8x8 inputs work too (RepDistiller's fails on last maps under 8x8 and, through
  ``view(-1, C)``, mixes samples up on larger ones);
* no dropout: RepDistiller's blocks accept a drop rate, but every ``wrn_D_k`` uses 0;
* pre-activation features come from the forward pass itself (see :class:`WideResNet`).

Initialisation as RepDistiller's: convolutions ~ N(0, 2 / (k*k*out_channels)) (kaiming normal,
fan out), BatchNorm weight 1 and bias 0, the linear layer's bias 0 and its weight PyTorch's
default. Modules are built and initialised in RepDistiller's order, so with ``in_chans=3`` the same
seed gives the same initial weights.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .features import FeatureInfo, FeatureNet, RawFeatures, StageInfo
from ._init import init_weights
from .registry import register_model


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 with a residual connection; the output is the sum, not
    activated (the next BatchNorm-ReLU belongs to the next block, or to the head).

    Where the width changes, the shortcut is a 1x1 convolution (``convShortcut``, RepDistiller's
    name) of the *activated* input; otherwise it is the raw input. The attributes are created in
    RepDistiller's order (bn1, conv1, bn2, conv2, convShortcut), which fixes the RNG use."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, kernel_size=3, stride=1, padding=1, bias=False)
        self.convShortcut: nn.Conv2d | None = None  # noqa: N815 - RepDistiller's state-dict key
        if in_ch != out_ch:  # RepDistiller's test; a stride alone never changes in these nets
            self.convShortcut = nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: Tensor, normed: Tensor | None = None) -> Tensor:
        """The block on ``x``. ``normed`` is ``bn1(x)`` when the caller computed it (and keeps
        it as a feature: its ReLU is then applied out of place)."""
        if normed is None:
            act = F.relu(self.bn1(x), inplace=True)
        else:
            act = F.relu(normed)
        out = self.conv2(F.relu(self.bn2(self.conv1(act)), inplace=True))
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        # Out of place: a stage's last sum is a feature, and every tensor a forward returns is
        # made by an out-of-place op (its ``_version`` stays 0).
        return torch.add(shortcut, out)


class WideStage(nn.Module):
    """A stage of ``WideBasicBlock``s, held in ``layer`` (RepDistiller's ``NetworkBlock``, whose
    keys are ``blockS.layer.N...``)."""

    def __init__(self, blocks: int, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(WideBasicBlock(in_ch if i == 0 else out_ch, out_ch, stride if i == 0 else 1)
              for i in range(blocks)))

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(FeatureNet):
    """A CIFAR WideResNet of depth ``6n + 4`` and widening factor ``widen``.

    Features, as RepDistiller's ``forward(x, is_feat=True, preact=...)`` and
    ``get_bn_before_relu()``:

    * ``stem``: the stem convolution's output (there is no stem BatchNorm or ReLU);
    * ``stages``: each stage's output, the raw residual sum (RepDistiller's f1, f2, f3): in this
      pre-activation network no ReLU ends a stage;
    * ``stages_pre``: the BatchNorm that follows each stage applied to it, before its ReLU: the
      ``bn1`` of the next stage's first block, and the head's ``bn1`` for the last stage. These
      are also the ``bn_before_relu`` modules (``block2.layer.0.bn1``, ``block3.layer.0.bn1``,
      ``bn1``);
    * ``pool``: the pooled vector after the head's BatchNorm-ReLU.

    Unlike RepDistiller, which applies those BatchNorms a second time after the forward pass to
    get its pre-activation features, kdzoo keeps the output the forward pass computes anyway: the
    values are the same (in train mode too: the same batch statistics), but in train mode
    RepDistiller updates those BatchNorms' running statistics twice per step and kdzoo once.
    """

    def __init__(self, depth: int, widen: int, num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4, not {depth}")
        blocks = (depth - 4) // 6
        stem_width = 16
        widths = (16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(in_chans, stem_width, kernel_size=3, stride=1, padding=1,
                               bias=False)
        self.block1 = WideStage(blocks, stem_width, widths[0], 1)
        self.block2 = WideStage(blocks, widths[0], widths[1], 2)
        self.block3 = WideStage(blocks, widths[1], widths[2], 2)
        self.bn1 = nn.BatchNorm2d(widths[2])
        self.fc = nn.Linear(widths[2], num_classes)
        bn_names = ("block2.layer.0.bn1", "block3.layer.0.bn1", "bn1")
        self.feature_info = FeatureInfo(
            stages=tuple(StageInfo(width, 2**index, preact=True, bn_before_relu=bn)
                         for index, (width, bn) in enumerate(zip(widths, bn_names))),
            pool=widths[2], logits=num_classes, stem=StageInfo(stem_width, 1),
            pre_pool=widths[2])

        init_weights(self, linear="zero_bias")

    def forward_features(self, x: Tensor) -> RawFeatures:
        x = stem = self.conv1(x)
        stages: list[Tensor] = []
        stages_pre: list[Tensor] = []
        for index, stage in enumerate((self.block1, self.block2, self.block3)):
            blocks = list(stage.layer)
            if index > 0:  # this stage's first bn1 gives the previous stage's pre-activation
                normed = blocks[0].bn1(x)
                stages_pre.append(normed)
                x = blocks[0](x, normed)
                blocks = blocks[1:]
            for block in blocks:
                x = block(x)
            stages.append(x)
        normed = self.bn1(x)
        stages_pre.append(normed)
        pre_pool = F.relu(normed)
        pool = F.adaptive_avg_pool2d(pre_pool, 1).flatten(1)
        return {"stem": stem, "stages": stages, "stages_pre": stages_pre, "pre_pool": pre_pool,
                "pool": pool, "logits": self.fc(pool)}


def _define(depth: int, widen: int) -> None:
    name = f"wrn_{depth}_{widen}"

    def factory(num_classes: int = 10, in_chans: int = 3) -> WideResNet:
        return WideResNet(depth, widen, num_classes=num_classes, in_chans=in_chans)

    factory.__name__ = name
    factory.__doc__ = (f"WRN-{depth}-{widen}: {(depth - 4) // 6} blocks per stage, widths "
                       f"16/{16 * widen}/{32 * widen}/{64 * widen} (stem/stages).")
    register_model(name, family="wrn")(factory)


for _depth, _widen in ((16, 1), (16, 2), (40, 1), (40, 2)):
    _define(_depth, _widen)
