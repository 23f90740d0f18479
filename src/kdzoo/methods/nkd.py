"""Normalized KD (NKD): the target probability and the normalized non-target distribution."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from ..functional.logit_kd import normalized_kd
from ..models.features import Features
from ._logit import LogitMethod, LogitParams
from .base import Step, non_negative, positive
from .registry import register_method


@dataclass(frozen=True)
class NKDParams(LogitParams):
    ce_weight: float = 1.0
    temperature: float = 1.0
    gamma: float = 1.5   # weight of the non-target term
    standardize: bool = False  # logit standardization (LS, CVPR 2024)
    ctkd: bool = False         # CTKD's learnable temperature (AAAI 2023)

    def check(self, method: str) -> None:
        positive(method, temperature=self.temperature)
        non_negative(method, ce_weight=self.ce_weight, gamma=self.gamma)


@register_method("nkd")
class NormalizedKD(LogitMethod[NKDParams]):
    """Normalized knowledge distillation: "From Knowledge Distillation to Self-Knowledge
    Distillation: A Unified Approach with Normalized Loss and Customized Soft Labels", Yang, Zeng,
    Li, Zhang, Yuan & Li, ICCV 2023.

    Reference: yzd-v/cls_KD ``mmcls/models/dis_losses/nkd.py`` (``NKDLoss``;
    https://github.com/yzd-v/cls_KD): loss = ce_weight * CE + mean_b[-p_t(y) log p_s(y)]
    - gamma T^2 mean_b sum_{k != y} q_t,k log q_s,k, q the softmax at temperature T over the
    non-target classes (:func:`kdzoo.functional.logit_kd.normalized_kd`); the target term is at
    temperature 1, and the loss has no weight of its own besides gamma. Defaults: ``NKDLoss``'s
    temp 1 and gamma 1.5 (the ImageNet setting) and the plain cross-entropy (weight 1) of cls_KD's
    distiller; cls_KD's CIFAR-100 config uses ``temperature: 3, gamma: 3.5``.

    The non-target mask is the corrected one: a version of ``nkd.py`` kept the target class in
    the non-target softmax (``scatter_(1, label, 1)``), which the authors fixed (cls_KD issue
    #16). With two classes the non-target term is 0. ``standardize`` and ``ctkd`` are the logit
    options of :mod:`kdzoo.methods._logit` (the temperature they set is the non-target one).
    """

    paper = ("From Knowledge Distillation to Self-Knowledge Distillation: A Unified Approach "
             "with Normalized Loss and Customized Soft Labels, Yang et al., ICCV 2023")
    url = "https://github.com/yzd-v/cls_KD/blob/1.0/mmcls/models/dis_losses/nkd.py"

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        s, t = self.logit_pair(features["student"].logits, features["teacher"].logits)
        loss = normalized_kd(s, t, step.batch.labels, self.temperature(step), self.params.gamma)
        return {"nkd": loss}
