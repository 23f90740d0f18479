"""``torchvision/<name>``: a torchvision classification model with its stages *described*.

torchvision's classifiers carry no feature metadata, so kdzoo keeps a table of each family's
stage return nodes (:data:`STAGE_NODES`), in the names ``create_feature_extractor`` accepts
(https://pytorch.org/vision/stable/feature_extraction.html), as torchvision's own detection
and segmentation backbones name theirs (``return_layers={"layer1": ..., "layer4": ...}`` for
ResNet in ``models/detection/backbone_utils.py``; MobileNet's stages where the stride changes,
its ``_is_cn`` blocks). A module name stands for the module's output (its last node).

A stage is the output of one resolution of the network, after its activation where the
network has one there: the last block at each reduction, and the last map the head pools. The
stem-level map counts as the first stage at 1/2 (ResNet's ``relu``, as timm's
``feature_info`` lists ``act1``). Per family:

* **ResNet, ResNeXt, Wide ResNet**: ``relu`` (stem, 1/2), ``layer1`` .. ``layer4`` (1/4 ..
  1/32), torchvision's detection ``return_layers``.
* **MobileNetV2, MobileNetV3, MNASNet, EfficientNet (B0-B7, V2)**: the stem or the last block
  before each strided block, whose output is the inverted residual's linear projection (plus
  the skip), as timm's ``feature_info`` taps these networks; the last stage is the final 1x1
  convolution (``features[-1]``, MNASNet's ``layers.16``), the map the head pools.
* **RegNet**: ``stem`` (1/2), ``trunk_output.block1`` .. ``block4`` (1/4 .. 1/32).
* **ConvNeXt**: the four stages ``features.1/3/5/7`` (1/4 .. 1/32), after each downsampling;
  the stem (``features.0``, 1/4) is not a stage, as in timm.
* **DenseNet**: ``features.relu0`` (1/2), then each dense block's output after the BatchNorm
  and ReLU its transition applies (``features.transitionN.relu``, 1/4 .. 1/16), and the final
  ``relu`` after ``norm5`` (1/32) that the head pools.
* **VGG (and _bn)**: the ReLU before each max pool (1/1 .. 1/16) and the last max pool (1/32),
  as timm's ``feature_info`` for VGG.
* **AlexNet**: the ReLU before each max pool (1/4, 1/8, 1/16) and the last max pool (1/32).
* **SqueezeNet 1.0/1.1**: the stem's ReLU (1/2) and the Fire module before each max pool
  (1/4, 1/8), the last Fire module (1/16); its classifier is a 1x1 convolution on that map.
* **ShuffleNetV2**: ``conv1`` (1/2), ``maxpool`` (1/4), ``stage2``, ``stage3`` (1/8, 1/16) and
  ``conv5`` (1/32) after ``stage4``, the map the head pools.
* **GoogLeNet**: ``conv1`` (1/2), ``conv3`` (1/4), ``inception3b``, ``inception4e``,
  ``inception5b`` (1/8 .. 1/32).
* **Inception v3**: ``Conv2d_2b_3x3``, ``Conv2d_4a_3x3``, ``Mixed_5d``, ``Mixed_6e``,
  ``Mixed_7c`` (1/2 .. 1/32), timm's ``feature_info`` for the same network.
* **Swin (v1, v2)**: the stages ``features.1/3/5`` (1/4 .. 1/16, channels-last maps that
  kdzoo permutes to NCHW) and the final normalised map, already NCHW (``permute``, 1/32).
* **MaxViT**: ``stem`` (1/2) and ``blocks.0`` .. ``blocks.3`` (1/4 .. 1/32), NCHW maps
  between its attention blocks as timm's ``feature_info`` for MaxViT; torchvision's MaxViT
  only runs at the 224x224 input it was built for.
* **ViT**: no stages. After the patch embedding the network is a sequence of tokens with a
  class token, one resolution (1/16) that is not a map, so there is no stage a map-based
  method could align; logit and pool methods apply.

Any other model has no stages (``stages=()``) unless ``stage_nodes`` names them.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, fx, nn

from ..errors import ConfigError
from ._graph import GraphFeatureNet, make_plan, trace

PROBE = 224  # the shape probe: every torchvision classifier accepts 224x224


def _family(members: Sequence[str], nodes: Sequence[str]) -> dict[str, tuple[str, ...]]:
    return dict.fromkeys(members, tuple(nodes))


def _features(*indices: int) -> tuple[str, ...]:
    return tuple(f"features.{i}" for i in indices)


_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
            "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2")
_REGNETS = tuple(f"regnet_{kind}_{size}" for kind in "xy"
                 for size in ("400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf", "32gf")) + \
    ("regnet_y_128gf",)

#: The stage return nodes of every torchvision classification model kdzoo describes (by
#: builder name, see the module doc); ``()``: the model has no stages.
STAGE_NODES: dict[str, tuple[str, ...]] = {
    **_family(_RESNETS, ("relu", "layer1", "layer2", "layer3", "layer4")),
    "mobilenet_v2": _features(1, 3, 6, 13, 18),
    "mobilenet_v3_small": _features(0, 1, 3, 8, 12),
    "mobilenet_v3_large": _features(1, 3, 6, 12, 16),
    **_family([f"efficientnet_b{i}" for i in range(8)], _features(1, 2, 3, 5, 8)),
    "efficientnet_v2_s": _features(1, 2, 3, 5, 7),
    **_family(("efficientnet_v2_m", "efficientnet_v2_l"), _features(1, 2, 3, 5, 8)),
    **_family(("mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3"),
              ("layers.7", "layers.8", "layers.9", "layers.11", "layers.16")),
    **_family(_REGNETS, ("stem", *(f"trunk_output.block{i}" for i in range(1, 5)))),
    **_family(("convnext_tiny", "convnext_small", "convnext_base", "convnext_large"),
              _features(1, 3, 5, 7)),
    **_family(("densenet121", "densenet161", "densenet169", "densenet201"),
              ("features.relu0", "features.transition1.relu", "features.transition2.relu",
               "features.transition3.relu", "relu")),
    "vgg11": _features(1, 4, 9, 14, 19, 20),
    "vgg11_bn": _features(2, 6, 13, 20, 27, 28),
    "vgg13": _features(3, 8, 13, 18, 23, 24),
    "vgg13_bn": _features(5, 12, 19, 26, 33, 34),
    "vgg16": _features(3, 8, 15, 22, 29, 30),
    "vgg16_bn": _features(5, 12, 22, 32, 42, 43),
    "vgg19": _features(3, 8, 17, 26, 35, 36),
    "vgg19_bn": _features(5, 12, 25, 38, 51, 52),
    "alexnet": _features(1, 4, 11, 12),
    "squeezenet1_0": _features(1, 5, 10, 12),
    "squeezenet1_1": _features(1, 4, 7, 12),
    **_family(("shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5",
               "shufflenet_v2_x2_0"), ("conv1", "maxpool", "stage2", "stage3", "conv5")),
    "googlenet": ("conv1", "conv3", "inception3b", "inception4e", "inception5b"),
    "inception_v3": ("Conv2d_2b_3x3", "Conv2d_4a_3x3", "Mixed_5d", "Mixed_6e", "Mixed_7c"),
    **_family(("swin_t", "swin_s", "swin_b", "swin_v2_t", "swin_v2_s", "swin_v2_b"),
              (*_features(1, 3, 5), "permute")),
    "maxvit_t": ("stem", *(f"blocks.{i}" for i in range(4))),
    **_family(("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14"), ()),
}


# --------------------------------------------------------------------------------------------
# Building and module surgery

_AUX_MODELS = ("googlenet", "inception_v3")


def build_torchvision(arch: str, num_classes: int, in_chans: int, pretrained: bool) -> nn.Module:
    """torchvision's own model: random (the builder's init) with ``num_classes`` outputs, or
    with the builder's DEFAULT weights (downloaded by torchvision) and its 1000-class head."""
    import torchvision.models

    builder = torchvision.models.get_model_builder(arch)
    kwargs: dict[str, Any] = {}
    if arch in _AUX_MODELS:
        if not pretrained:
            kwargs.update(aux_logits=False, init_weights=True)
        elif in_chans != 3:
            kwargs["transform_input"] = False  # its RGB re-normalisation needs 3 channels
    if pretrained:
        model = builder(weights="DEFAULT", **kwargs)
    else:
        model = builder(weights=None, num_classes=num_classes, **kwargs)
    if getattr(model, "aux_logits", False):  # pretrained inception_v3 keeps its aux head
        model.aux_logits = False
        for attr in ("AuxLogits", "aux1", "aux2"):
            if hasattr(model, attr):
                setattr(model, attr, None)
    return model


def adapt_conv_weight(weight: Tensor, in_chans: int) -> Tensor:
    """An RGB kernel for ``in_chans`` input channels, as timm's ``adapt_input_conv``: summed
    over the channels for one channel, otherwise repeated and rescaled by 3 / in_chans."""
    if weight.shape[1] != 3:
        raise ConfigError(f"cannot adapt a first convolution of {weight.shape[1]} input "
                          "channels (expected 3)")
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeat = math.ceil(in_chans / 3)
    return weight.repeat(1, repeat, 1, 1)[:, :in_chans] * (3 / in_chans)


def _set_submodule(root: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, leaf = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def find_first_conv(graph: fx.Graph, root: nn.Module) -> str:
    """The module name of the first Conv2d in execution order ('' where there is none); it may
    sit inside a module the tracer keeps whole (torchvision.ops' Conv2dNormActivation)."""
    for node in graph.nodes:
        if node.op == "call_module":
            for name, module in root.get_submodule(node.target).named_modules():
                if isinstance(module, nn.Conv2d):
                    return f"{node.target}.{name}" if name else str(node.target)
    return ""


def _replace_first_conv(model: nn.Module, target: str, in_chans: int) -> None:
    """Swap the Conv2d at ``target`` for one reading ``in_chans`` channels, its kernel adapted
    from the existing one (pretrained or the builder's own initialisation)."""
    conv = model.get_submodule(target)
    assert isinstance(conv, nn.Conv2d)
    if conv.groups != 1:
        raise ConfigError(f"cannot adapt the grouped first convolution {target} to {in_chans} "
                          "input channels")
    new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, 1, conv.bias is not None, conv.padding_mode,
                    device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(adapt_conv_weight(conv.weight, in_chans))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    _set_submodule(model, target, new)


def _replace_final_layer(model: nn.Module, target: str, num_classes: int) -> None:
    """A fresh classifier of ``num_classes`` outputs in place of the (pretrained) one."""
    layer = model.get_submodule(target)
    if isinstance(layer, nn.Linear):
        new: nn.Module = nn.Linear(layer.in_features, num_classes, bias=layer.bias is not None)
    elif isinstance(layer, nn.Conv2d):
        new = nn.Conv2d(layer.in_channels, num_classes, layer.kernel_size, layer.stride,
                        layer.padding, bias=layer.bias is not None)
    else:  # pragma: no cover - the final layer search only returns Linear or Conv2d
        raise ConfigError(f"cannot replace the classifier {target} ({type(layer).__name__})")
    _set_submodule(model, target, new.to(device=layer.weight.device, dtype=layer.weight.dtype))


# --------------------------------------------------------------------------------------------
# The network


class TorchvisionNet(GraphFeatureNet):
    """A torchvision classification model, its stages from :data:`STAGE_NODES` or the user's
    ``stage_nodes`` (node names of ``create_feature_extractor``; ``()``: no stages)."""

    def __init__(self, arch: str, num_classes: int = 10, in_chans: int = 3,
                 pretrained: bool = False, stage_nodes: Sequence[str] | None = None) -> None:
        super().__init__()
        label = f"torchvision/{arch}"
        model = build_torchvision(arch, num_classes, in_chans, pretrained)
        graph, names = trace(model, label)
        if in_chans != 3:
            first = find_first_conv(graph, model)
            if not first:
                raise ConfigError(f"{label} has no first Conv2d to adapt to {in_chans} input "
                                  "channels")
            _replace_first_conv(model, first, in_chans)
        nodes = STAGE_NODES.get(arch, ()) if stage_nodes is None else tuple(stage_nodes)
        plan = make_plan(model, graph, names, nodes, in_chans, PROBE, label)
        if plan.logits != num_classes:
            if not pretrained:
                raise ConfigError(f"{label} gives {plan.logits} logits, not {num_classes}")
            _replace_final_layer(model, plan.final_layer, num_classes)
            plan.logits = num_classes
        self._setup(model, plan, label)
