"""Weighted soft labels (WSLD): KD weighted per sample by the student/teacher CE ratio."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from ..functional.logit_kd import weighted_soft_label_kd
from ..models.features import Features
from ._logit import LogitMethod, LogitParams
from .base import Step, non_negative, positive
from .registry import register_method


@dataclass(frozen=True)
class WSLDParams(LogitParams):
    ce_weight: float = 1.0
    temperature: float = 4.0
    alpha: float = 2.25   # weight of the weighted soft-label term
    standardize: bool = False  # logit standardization (LS, CVPR 2024)
    ctkd: bool = False         # CTKD's learnable temperature (AAAI 2023)

    def check(self, method: str) -> None:
        positive(method, temperature=self.temperature)
        non_negative(method, ce_weight=self.ce_weight, alpha=self.alpha)


@register_method("wsld")
class WeightedSoftLabelKD(LogitMethod[WSLDParams]):
    """Weighted soft label distillation: "Rethinking Soft Labels for Knowledge Distillation: A
    Bias-Variance Tradeoff Perspective", Zhou, Song, Chen, Zhou, Wang, Yuan & Zhang, ICLR 2021.

    References: the authors' bellymonster/Weighted-Soft-Label-Distillation
    ``knowledge_distiller.py`` (``WSLDistiller``, ImageNet: T 2, alpha 2.5;
    https://github.com/bellymonster/Weighted-Soft-Label-Distillation) and its port yzd-v/cls_KD
    ``mmcls/models/dis_losses/wsld.py`` (``WSLDLoss``; https://github.com/yzd-v/cls_KD), whose
    defaults are the CIFAR-100 setting (T 4, alpha 2.25), as the authors give it in the paper's
    section 5 and their issue #2. Both compute loss = CE + alpha * T^2 * mean_b w_b * H(softmax(
    z_t/T), softmax(z_s/T)), H the soft cross-entropy and w_b = 1 - exp(-CE_s,b / (CE_t,b + 1e-7))
    from the temperature-1 cross-entropies of student and teacher, without gradient
    (:func:`kdzoo.functional.logit_kd.weighted_soft_label_kd`). kdzoo's defaults are the CIFAR
    ones: ce_weight 1, temperature 4, alpha 2.25.
    """

    paper = ("Rethinking Soft Labels for Knowledge Distillation: A Bias-Variance Tradeoff "
             "Perspective, Zhou et al., ICLR 2021")
    url = "https://github.com/bellymonster/Weighted-Soft-Label-Distillation"

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        s, t = self.logit_pair(features["student"].logits, features["teacher"].logits)
        loss = weighted_soft_label_kd(s, t, step.batch.labels, self.temperature(step),
                                      self.params.alpha)
        return {"wsld": loss}
