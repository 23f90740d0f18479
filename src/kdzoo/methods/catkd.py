"""CAT-KD: class attention transfer (transfer of class activation maps)."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..core import Stage
from ..errors import ConfigError
from ..functional import activation_maps as KA
from ..models.features import FeatureRequest, Features
from ._networks import classifier_weight
from .base import Method, MethodContext, MethodParams, Step
from .registry import register_method


@dataclass(frozen=True)
class CATKDParams(MethodParams):
    weight: float = 400.0
    ce_weight: float = 1.0
    resolution: int = 2
    normalize: bool = True
    only_cat: bool = False
    binarize: bool = False
    partial_cams: bool = False
    cams_num: int = 100
    strategy: Literal["top", "bottom"] = "top"

    def check(self, method: str) -> None:
        if self.resolution < 1:
            raise ConfigError(f"method {method}: resolution must be at least 1, got "
                              f"{self.resolution}")
        if self.weight < 0 or self.ce_weight < 0:
            raise ConfigError(f"method {method}: weight and ce_weight must not be negative")


@register_method("catkd")
class ClassAttentionTransfer(Method[CATKDParams]):
    """Class attention transfer: "Class Attention Transfer Based Knowledge Distillation", Guo,
    Yan, Li & Lin, CVPR 2023. Authors' code: GzyAftermath/CAT-KD@4467073,
    ``mdistiller/distillers/CAT_KD.py``, ``mdistiller/engine/cfg.py``, ``tools/train.py``,
    ``mdistiller/models/cifar/*.py`` (the ``*_test`` models), ``configs/cifar100/CAT_KD/*.yaml``.

    The class activation maps (CAMs) of each network are its classifier weight applied at every
    position of the map it globally pools (``FeatureRequest(pre_pool=True)``), without the bias
    (:func:`kdzoo.functional.activation_maps.class_activation_maps`): the reference converts
    both networks to ``*_test`` models whose classifier is a bias-free 1x1 convolution before
    the pool, the teacher's initialised with its trained ``fc`` weight. The student's CAMs use
    its own (trained) classifier weight, so the CAT loss trains it too; the teacher's are
    constant. Loss = ``weight`` (the reference's beta, ``CAT_loss_weight``) *
    :func:`kdzoo.functional.activation_maps.cat_loss`: both CAM stacks average-pooled to
    ``resolution`` x ``resolution`` (``CAM_RESOLUTION``), L2-normalised per map when
    ``normalize`` (``IF_NORMALIZE``), mean squared difference; plus the cross-entropy times
    ``ce_weight`` (``CE_WEIGHT``), or none with ``only_cat`` (``onlyCAT``: the paper's "CAT",
    transfer alone). Student and teacher may have other widths and map sizes (the CAMs have one
    map per class and are pooled to one size); both must name a pooled map and a linear
    classifier.

    The reference's options, off by default as there: ``binarize`` (``IF_BINARIZE``: the
    teacher's CAMs become 1 where above their mean absolute value, else 0) and ``partial_cams``
    (``IF_OnlyTransferPartialCAMs``, with ``cams_num`` = ``CAMs_Nums`` and ``strategy`` "top" /
    "bottom" = ``Strategy`` 0 / 1): only the CAMs of the classes the teacher ranks high (its
    logits above the ``cams_num``-th largest, so ``cams_num`` - 1 classes) or low (at most the
    (classes - ``cams_num``)-th largest, ``cams_num`` + 1 classes) are transferred, computed from
    the teacher's bias-free logits (the CAMs' spatial means, as the converted teacher's), and all
    of them when the number kept is not a multiple of the batch, as the reference's ``_mask``.

    Defaults are ``cfg.py``'s CIFAR-100 defaults: weight 400, resolution 2, normalize True,
    ce_weight 1. Beta is tuned per architecture pair in the authors' configs (CE 1 in all):
    resnet32x4->resnet8x4 15 (resolution 2, normalize False), resnet56->resnet20 0.7 (2, False),
    resnet110->resnet32 1.8 (2, False), wrn_40_2->wrn_16_2 12 (2, False), wrn_40_2->wrn_40_1 1.5
    (2, False), vgg13->vgg8 4.5 (2, False), vgg13->MobileNetV2 15 (2, True), ResNet50->
    MobileNetV2 40 (2, True), resnet32x4->ShuffleV1 600 (4, True), resnet32x4->ShuffleV2 600
    (4, True), wrn_40_2->ShuffleV1 80 (4, True); CAT alone (resnet32x4->resnet32x4): 50, only_cat,
    normalize True.

    Deliberate differences: the student keeps its network's classifier with its bias (the
    reference's ``*_test`` student has none), so its logits, trained by the cross-entropy,
    include the bias while its CAMs do not; the partial-CAM "bottom" strategy uses classes - 1
    where the reference hard-codes 99 (the same on CIFAR-100); ``cams_num`` out of range is
    refused in one line.
    """

    paper = "Class Attention Transfer Based Knowledge Distillation, Guo, Yan, Li & Lin, CVPR 2023"
    url = "https://arxiv.org/abs/2304.12777"
    needs = FeatureRequest(pre_pool=True)

    def __init__(self, ctx: MethodContext, params: CATKDParams) -> None:
        super().__init__(ctx, params)
        p = self.params
        if p.partial_cams:
            low, high = (1, ctx.num_classes) if p.strategy == "top" else (0, ctx.num_classes - 1)
            if not low <= p.cams_num <= high:
                raise ConfigError(f"method {self.name}: cams_num must be in [{low}, {high}] for "
                                  f"strategy={p.strategy} with {ctx.num_classes} classes, got "
                                  f"{p.cams_num}")

    def stages(self, main: Stage) -> list[Stage]:
        ce_weight = 0.0 if self.params.only_cat else self.params.ce_weight
        return [dataclasses.replace(main, ce_weight=ce_weight)]

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        p = self.params
        student, teacher = features["student"].pre_pool, features["teacher"].pre_pool
        assert student is not None and teacher is not None
        s_weight = classifier_weight(step.networks["student"], self.name)
        student_cams = KA.class_activation_maps(student, s_weight.to(student))
        with torch.no_grad():
            t_weight = classifier_weight(step.networks["teacher"], self.name).detach()
            teacher_cams = KA.class_activation_maps(teacher, t_weight.to(teacher))
            if p.partial_cams:
                mask = KA._partial_mask(teacher_cams.mean(dim=(2, 3)), p.cams_num, p.strategy)
            if p.binarize:
                teacher_cams = KA._binarize(teacher_cams)
        if p.partial_cams:
            teacher_cams, student_cams = KA._select_cams(teacher_cams, student_cams, mask)
        return {"catkd": p.weight * KA.cat_loss(student_cams, teacher_cams, p.resolution,
                                                p.normalize)}
