"""Hinton et al.'s knowledge distillation in mdistiller's convention (CE 0.1, KD 0.9, T 4)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from .. import functional as KF
from ..models.features import Features
from ._logit import LogitMethod, LogitParams
from .base import Step, non_negative, positive
from .registry import register_method


@dataclass(frozen=True)
class KDParams(LogitParams):
    ce_weight: float = 0.1
    weight: float = 0.9
    temperature: float = 4.0
    standardize: bool = False  # logit standardization (LS, CVPR 2024)
    ctkd: bool = False         # CTKD's learnable temperature (AAAI 2023)

    def check(self, method: str) -> None:
        positive(method, temperature=self.temperature)
        non_negative(method, ce_weight=self.ce_weight, weight=self.weight)


@register_method("kd")
class KnowledgeDistillation(LogitMethod[KDParams]):
    """Knowledge distillation: "Distilling the Knowledge in a Neural Network", Hinton, Vinyals &
    Dean, NIPS Deep Learning Workshop 2014.

    Reference: megvii-research/mdistiller, ``mdistiller/distillers/KD.py`` (``kd_loss``) with
    the defaults of ``mdistiller/engine/cfg.py`` (``CFG.KD``; https://github.com/megvii-research/
    mdistiller): loss = ce_weight * CE + weight * T^2 * KL(softmax(z_t/T) || softmax(z_s/T)), the
    KL summed over classes and averaged over the batch, with ce_weight 0.1, weight 0.9 and T 4.
    (kdzoo's ``st`` is the same loss in the Knowledge-Distillation-Zoo convention: CE weight 1,
    KD weight 0.1.) ``standardize`` and ``ctkd`` are the logit options of
    :mod:`kdzoo.methods._logit`; the LS paper's recipe is temperature 2, weight 9, ce_weight 0.1
    with ``standardize``.
    """

    paper = "Distilling the Knowledge in a Neural Network, Hinton, Vinyals & Dean, NIPS-W 2014"
    url = "https://github.com/megvii-research/mdistiller/blob/master/mdistiller/distillers/KD.py"

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        s, t = self.logit_pair(features["student"].logits, features["teacher"].logits)
        loss = KF.soft_target(s, t, self.temperature(step))
        return {"kd": self.params.weight * loss}
