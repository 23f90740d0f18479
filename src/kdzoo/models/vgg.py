"""VGG networks with BatchNorm for CIFAR (Simonyan and Zisserman, "Very Deep Convolutional
Networks for Large-Scale Image Recognition", ICLR 2015; BatchNorm: Ioffe and Szegedy, ICML 2015),
as RepDistiller builds them (Tian, Krishnan and Isola, "Contrastive Representation
Distillation", ICLR 2020; https://github.com/HobbitLong/RepDistiller, ``models/vgg.py``).
kdzoo's ``vgg8`` ... ``vgg19`` are RepDistiller's ``vgg8_bn`` ... ``vgg19_bn`` (its model
dictionary maps ``vgg8`` to ``vgg8_bn`` too); the ``_bn`` names are accepted as aliases.

Five groups of 3x3 convolutions (``block0`` ... ``block4``, each conv + BatchNorm + ReLU, the
group's last ReLU applied by the network), then global average pooling and one linear layer
(``classifier``; VGG's three fully connected layers are gone, though the names still count them).
Configurations: ``vgg8`` one convolution per group (64/128/256/512/512; RepDistiller's "S",
not in the paper), ``vgg11`` "A", ``vgg13`` "B", ``vgg16`` "D", ``vgg19`` "E" of the paper.
The layers, state-dict keys (``blockG.I`` in an ``nn.Sequential`` that keeps its in-place ReLU
modules, so the indices are RepDistiller's), parameter counts and forward pass are RepDistiller's.
Points of RepDistiller's design kept as they are:

* the convolutions have biases although a BatchNorm follows each (they count as parameters);
* 2x2 max-pooling follows ``block0``, ``block1`` and ``block2`` only: ``pool3`` runs only on inputs
  64 pixels high (Tiny-ImageNet), so on CIFAR ``block3`` and ``block4`` both work on 4x4 maps
  (reduction 8). ``feature_info`` gives the reductions of 32x32 inputs;
* the stem (``block0``, after its ReLU) is the same in the pre- and post-activation feature lists.

The one difference: ``in_chans`` input channels (RepDistiller hard-codes 3). RepDistiller
already pools adaptively (``AdaptiveAvgPool2d``), so 28x28 inputs (maps 28, 14, 7, 3: max-pooling
rounds down, which the ceil of :func:`~kdzoo.models.feature_shapes` does not model) and 8x8 inputs
(maps 8, 4, 2, 1) work as they are, and its pre-activation features already come from the same
forward pass.

Initialisation as RepDistiller's: convolution weights ~ N(0, 2 / (k*k*out_channels)) (kaiming
normal, fan out) and biases 0, BatchNorm weight 1 and bias 0, the linear layer's weight
~ N(0, 0.01^2) and bias 0. Modules are built and initialised in RepDistiller's order, so with
``in_chans=3`` the same seed gives the same initial weights.
"""
from __future__ import annotations


import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from .features import FeatureInfo, FeatureNet, RawFeatures, StageInfo
from ._init import init_weights
from .registry import register_model

#: Output widths of the convolutions of each of the five groups.
CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512),
              (512, 512, 512, 512)),
}
#: Inputs this high get RepDistiller's fourth max-pool (before ``block4``).
POOL3_HEIGHT = 64


def _conv_group(in_ch: int, widths: tuple[int, ...]) -> nn.Sequential:
    """conv3x3-BN-ReLU per width, without the last ReLU: the group ends in its BatchNorm, the
    output before the activation."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_ch, width, kernel_size=3, padding=1), nn.BatchNorm2d(width),
                   nn.ReLU(inplace=True)]
        in_ch = width
    return nn.Sequential(*layers[:-1])


class VGG(FeatureNet):
    """A CIFAR VGG with BatchNorm: a stem group and four stages.

    Features, as RepDistiller's ``forward(x, is_feat=True, preact=...)`` (f0 ... f5) and
    ``get_bn_before_relu()``:

    * ``stem``: ``block0``'s output after its ReLU, at full resolution (f0);
    * ``stages``: ``block1`` ... ``block4``'s outputs after their ReLU (f1 ... f4), at reductions
      2, 4, 8, 8 on 32x32 inputs;
    * ``stages_pre``: the same before the ReLU, i.e. the output of each group's last BatchNorm,
      which is the ``bn_before_relu`` module (``blockG.{len - 1}``);
    * ``pool``: the globally averaged ``block4`` output (f5).
    """

    classifier_module = "classifier"

    def __init__(self, config: tuple[tuple[int, ...], ...], num_classes: int = 10,
                 in_chans: int = 3) -> None:
        super().__init__()
        if len(config) != 5:
            raise ValueError(f"a VGG configuration has 5 groups, not {len(config)}")
        in_widths = (in_chans, *(group[-1] for group in config[:-1]))
        self.block0, self.block1, self.block2, self.block3, self.block4 = (
            _conv_group(in_ch, group) for in_ch, group in zip(in_widths, config))
        width = config[-1][-1]
        self.classifier = nn.Linear(width, num_classes)
        stages = (self.block1, self.block2, self.block3, self.block4)
        self.feature_info = FeatureInfo(
            stages=tuple(StageInfo(group[-1], reduction, preact=True,
                                   bn_before_relu=f"block{index + 1}.{len(stage) - 1}")
                         for index, (group, reduction, stage)
                         in enumerate(zip(config[1:], (2, 4, 8, 8), stages))),
            pool=width, logits=num_classes, stem=StageInfo(config[0][-1], 1), pre_pool=width)

        init_weights(self, linear="normal")

    def forward_features(self, x: Tensor) -> RawFeatures:
        images = x
        x = stem = F.relu(self.block0(x))  # out of place: every returned tensor keeps version 0
        stages: list[Tensor] = []
        stages_pre: list[Tensor] = []
        for index, block in enumerate((self.block1, self.block2, self.block3, self.block4)):
            x = F.max_pool2d(x, kernel_size=2, stride=2) if index < 3 else pool3(x, images)
            pre = block(x)
            x = F.relu(pre)  # out of place: ``pre`` is a feature
            stages_pre.append(pre)
            stages.append(x)
        pool = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return {"stem": stem, "stages": stages, "stages_pre": stages_pre, "pre_pool": x,
                "pool": pool, "logits": self.classifier(pool)}


def pool3(x: Tensor, images: Tensor) -> Tensor:
    """RepDistiller's ``pool3``: a 2x2 max-pool before ``block4`` only for inputs 64 pixels
    high. A leaf function for torch.fx (:func:`torch.fx.wrap`), so the network stays traceable
    (the frozen teacher's BatchNorms are folded along the traced graph) although the test
    depends on the input's shape."""
    return F.max_pool2d(x, kernel_size=2, stride=2) if images.shape[2] == POOL3_HEIGHT else x


torch.fx.wrap("pool3")


def _define(name: str, config: tuple[tuple[int, ...], ...]) -> None:
    def factory(num_classes: int = 10, in_chans: int = 3) -> VGG:
        return VGG(config, num_classes=num_classes, in_chans=in_chans)

    factory.__name__ = name
    factory.__doc__ = (f"{name.upper()} with BatchNorm (RepDistiller's {name}_bn): convolution "
                       f"widths {' | '.join('/'.join(map(str, g)) for g in config)}.")
    register_model(name, family="vgg", aliases=(f"{name}_bn",))(factory)


for _name, _config in CONFIGS.items():
    _define(_name, _config)
