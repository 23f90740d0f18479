"""Shared plumbing of the feature-map methods (FitNet, FSP, AB, WKD, ...): connectors for
students of other widths, RepDistiller's ``ConvReg`` and the initialisation stages of FSP and AB
(the reference zoo's and RepDistiller's)."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Callable, TypeVar

import torch.nn.functional as F
from torch import Tensor, nn

from .. import functional as KF
from ..core import MultiStep, Piecewise, Stage
from ..errors import ConfigError
from ..models.features import FeatureInfo, FeatureRequest, Features
from .base import Method, MethodContext, MethodParams, P

#: The reference's ``adjust_lr_init`` splits its 50 epochs 30 / 10 / 10.
INIT_FRACTIONS = (0.6, 0.2, 0.2)


def conv_bn_connector(in_channels: int, out_channels: int) -> nn.Sequential:
    """A 1x1 convolution (no bias: BatchNorm follows) + BatchNorm mapping a student map to the
    teacher's width: the connector of Heo et al.'s AB code and RepDistiller's ``Connector``/
    ``ConvReg`` without ReLU (teacher targets may be pre-ReLU). The convolution gets He-normal
    init with fan_out (std sqrt(2 / out_channels)), BatchNorm weight 1 and bias 0, as there."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / out_channels))
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels))


def connector_key(info: FeatureInfo, position: int, preact: bool = False) -> str:
    """The name of the student's stage at ``position`` (negative): ``stage3`` for the last of
    three stages, ``stage2_pre`` for the pre-activation output of the second, as the connectors
    of the CIFAR ResNets have always been named."""
    return f"stage{len(info.stages) + position + 1}{'_pre' if preact else ''}"


def width_connectors(ctx: MethodContext, request: FeatureRequest,
                     stem: bool = False) -> nn.ModuleDict:
    """A :func:`conv_bn_connector` for each requested stage (and the stem, if ``stem``) whose
    student and teacher channel counts differ, and nothing for the others (equal widths: the
    reference's exact behaviour). Stages are aligned from the end."""
    student, teacher = ctx.infos["student"], ctx.infos["teacher"]
    pairs = [(connector_key(student, p, request.preact), student.stages[p].channels,
              teacher.stages[p].channels) for p in request.positions]
    if stem:
        assert student.stem is not None and teacher.stem is not None
        pairs.insert(0, ("stem", student.stem.channels, teacher.stem.channels))
    connectors = nn.ModuleDict()
    for key, s_channels, t_channels in pairs:
        if s_channels != t_channels:
            connectors[key] = conv_bn_connector(s_channels, t_channels)
    return connectors


def connect(connectors: nn.ModuleDict, key: str, student_feat: Tensor) -> Tensor:
    """The student's map ``key``, through its connector when it has one."""
    return connectors[key](student_feat) if key in connectors else student_feat


def stage_shape(info: FeatureInfo, position: int, image_size: int) -> tuple[int, int, int]:
    """(C, H, W) of the stage at ``position`` for square inputs of ``image_size``, from the
    metadata (a stride-2 convolution with padding rounds up)."""
    stage = info.stages[position]
    side = -(-image_size // stage.reduction)
    return stage.channels, side, side


class ConvRegressor(nn.Module):
    """RepDistiller's ``ConvReg`` (models/util.py), which mdistiller's WKD code reuses: a
    convolution chosen by the heights, then BatchNorm and (``use_relu``) ReLU. A student map of
    twice the teacher's height: 3x3 stride 2, padding 1; of half: 4x4 transposed convolution
    stride 2, padding 1; of at least the teacher's height: a (1 + H_s - H_t) x (1 + W_s - W_t)
    convolution (1x1 for equal sizes); anything else is refused. PyTorch's default init, the
    convolution with a bias, as there. Shapes are (C, H, W)."""

    def __init__(self, method: str, student_shape: tuple[int, int, int],
                 teacher_shape: tuple[int, int, int], use_relu: bool = True) -> None:
        super().__init__()
        s_channels, s_height, s_width = student_shape
        t_channels, t_height, t_width = teacher_shape
        self.conv: nn.Module
        if s_height == 2 * t_height:
            self.conv = nn.Conv2d(s_channels, t_channels, kernel_size=3, stride=2, padding=1)
        elif s_height * 2 == t_height:
            self.conv = nn.ConvTranspose2d(s_channels, t_channels, kernel_size=4, stride=2,
                                           padding=1)
        elif s_height >= t_height:
            self.conv = nn.Conv2d(s_channels, t_channels,
                                  kernel_size=(1 + s_height - t_height, 1 + s_width - t_width))
        else:
            raise ConfigError(f"method {method}: RepDistiller's ConvReg cannot map a "
                              f"{s_height}x{s_width} student map to a {t_height}x{t_width} "
                              "teacher map (it handles twice, half or at least the teacher's "
                              "height)")
        self.bn = nn.BatchNorm2d(t_channels)
        self.use_relu = use_relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x) if self.use_relu else x


def averaged_stage_loss(method: Method[P], connectors: nn.ModuleDict,
                        features: Mapping[str, Features],
                        loss: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """The reference's per-stage average: mean over the method's requested stages of
    ``loss(s, t)``, the student's map going through its connector (if any) and the larger map
    pooled to the other's size."""
    request = method.requests["student"]
    keys = [connector_key(method.ctx.infos["student"], p, request.preact)
            for p in request.positions]
    losses = [loss(*KF.match_spatial_size(connect(connectors, key, s), t))
              for key, (s, t) in zip(keys, method.stage_pairs(features))]
    return sum(losses) / len(losses)


class InitParams(MethodParams):
    """What :class:`InitThenCrossEntropy` reads, declared for typed reads: ``init_epochs``,
    ``init_lr`` and ``variant`` are fields of each method's dataclass (FSP's, AB's)."""

    init_epochs: int
    init_lr: float
    variant: str


IP = TypeVar("IP", bound=InitParams)


class InitThenCrossEntropy(Method[IP]):
    """FSP's and AB's shape: ``init_epochs`` of the method alone, then cross-entropy only (see
    :func:`init_then_ce_stages`; ``variant="repdistiller"``:
    :func:`repdistiller_init_then_ce_stages`)."""

    def stages(self, main: Stage) -> list[Stage]:
        p = self.params
        if p.variant == "repdistiller":
            return repdistiller_init_then_ce_stages(main, self.name, p.init_epochs, p.init_lr)
        return init_then_ce_stages(main, self.name, p.init_epochs, p.init_lr)


def init_schedule(init_epochs: int, init_lr: float = 0.01) -> Piecewise:
    """The initialisation stage's learning rates: ``init_lr``, /10, /100 for 60% / 20% / 20% of
    ``init_epochs`` (exactly 30 / 10 / 10 epochs of 0.01 / 0.001 / 0.0001 for the reference's 50;
    shorter stages round the first two segments half up and give the rest to the last)."""
    first = int(INIT_FRACTIONS[0] * init_epochs + 0.5)
    second = min(int(INIT_FRACTIONS[1] * init_epochs + 0.5), init_epochs - first)
    lengths = (first, second, init_epochs - first - second)
    # division, not * 0.1**i: 0.01 / 100 is exactly the reference's literal 0.0001
    segments = tuple((n, init_lr / 10**i) for i, n in enumerate(lengths) if n > 0)
    return Piecewise(segments)


def check_init_settings(method: str, init_epochs: int, init_lr: float) -> None:
    """One clear line for an initialisation stage that cannot run."""
    if init_epochs < 1:
        raise ConfigError(f"method {method}: init_epochs must be at least 1, got {init_epochs} "
                          "(without its initialisation stage the method is the baseline)")
    if not init_lr > 0:
        raise ConfigError(f"method {method}: init_lr must be positive, got {init_lr}")


def init_then_ce_stages(main: Stage, method: str, init_epochs: int,
                        init_lr: float = 0.01) -> list[Stage]:
    """FSP's and AB's two stages (the reference zoo, github.com/AberHu/Knowledge-Distillation-Zoo:
    train_kd.py):

    1. ``init``: ``init_epochs`` epochs of the method's loss alone. The cross-entropy is kept
       with weight 0, so the classifier gets zero gradients and still weight decay, as in the
       reference; no evaluation; learning rates from :func:`init_schedule`; the same optimiser
       object as the main stage ("main"), so the momentum buffers carry over.
    2. ``main``: the run's configured schedule with cross-entropy only (method weight 0: the loop
       then runs neither the method nor the teacher; the reference computes the loss, multiplies
       it by 0 and logs it).
    """
    check_init_settings(method, init_epochs, init_lr)
    init = Stage("init", init_epochs, init_schedule(init_epochs, init_lr), ce_weight=0.0,
                 optimizer=main.optimizer, evaluate=False)
    return [init, dataclasses.replace(main, method_weight=0.0)]


def repdistiller_init_then_ce_stages(main: Stage, method: str, init_epochs: int,
                                     init_lr: float) -> list[Stage]:
    """FSP's and AB's two stages as RepDistiller runs them (HobbitLong/RepDistiller@b84f547:
    train_student.py lines 227-263, helper/pretrain.py, helper/loops.py):

    1. ``init``: ``init_epochs`` (its ``--init_epochs`` 30) epochs of the method's loss alone, at
       the constant lr ``init_lr`` (its ``opt.learning_rate``: 0.05, or 0.01 for MobileNetV2 /
       ShuffleNet students), by a new SGD optimiser of its own (the run's momentum, weight decay
       and Nesterov setting: 0.9, 5e-4, none); no evaluation. RepDistiller's optimiser holds
       only the student's feature modules (``get_feat_modules()``) and the method's modules, so
       the classifier is left untouched: the cross-entropy (weight 0) is not computed at all,
       and the parameters the method's loss does not reach get no gradient, which SGD skips
       (no weight decay either).
    2. ``main``: the run's configured schedule with the cross-entropy only, by a new optimiser
       (RepDistiller builds its main optimiser after the initialisation), as there (its
       ``loss_kd = 0`` for FSP and AB).
    """
    check_init_settings(method, init_epochs, init_lr)
    init = Stage("init", init_epochs, MultiStep(init_lr, ()), ce_weight=0.0, keep_zero_ce=False,
                 optimizer="init", optimizer_settings={"lr": init_lr}, evaluate=False)
    return [init, dataclasses.replace(main, method_weight=0.0)]
