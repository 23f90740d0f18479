"""The weight initialisation RepDistiller's CIFAR models share (``models/*.py`` there), in one
place: convolutions ~ N(0, 2 / (k * k * out_channels)) (kaiming normal, fan_out, relu) with
biases 0, BatchNorm weight 1 and bias 0; the linear layer as each model has it. Modules are
visited in registration order, so a seed gives RepDistiller's initial weights."""
from __future__ import annotations

from typing import Literal

from torch import nn


def init_weights(model: nn.Module,
                 linear: Literal["default", "zero_bias", "normal"] = "default") -> None:
    """``linear``: "default" keeps PyTorch's initialisation (the ResNets), "zero_bias" zeroes
    only the bias (the WRNs), "normal" draws the weight from N(0, 0.01^2) and zeroes the bias
    (VGG, MobileNetV2)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and linear != "default":
            if linear == "normal":
                nn.init.normal_(module.weight, 0.0, 0.01)
            nn.init.zeros_(module.bias)
