"""Hinton et al.'s knowledge distillation in mdistiller's convention (CE 0.1, KD 0.9, T 4)."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .. import functional as KF
from ..errors import ConfigError
from ..models.features import Features
from ._logit import LogitMethod
from .base import MethodParams, Step, positive
from .registry import register_method


def non_negative(method: str, **values: float) -> None:
    """One line for the first of ``values`` (loss weights) that is negative."""
    for key, value in values.items():
        if not value >= 0:
            raise ConfigError(f"method {method}: {key} must be non-negative, got {value}")


@register_method("kd")
class KnowledgeDistillation(LogitMethod):
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

    @dataclass
    class Params(MethodParams):
        ce_weight: float = 0.1
        weight: float = 0.9
        temperature: float = 4.0
        standardize: bool = False  # logit standardization (LS, CVPR 2024)
        ctkd: bool = False         # CTKD's learnable temperature (AAAI 2023)

        def check(self, method: str) -> None:
            positive(method, temperature=self.temperature)
            non_negative(method, ce_weight=self.ce_weight, weight=self.weight)

    def forward(self, student: Features, teacher: Features | None,
                step: Step) -> dict[str, Tensor]:
        assert teacher is not None
        s, t = self.logit_pair(student.logits, teacher.logits)
        loss = KF.soft_target(s, t, self.temperature(step))  # type: ignore[arg-type]
        return {"kd": self.params.weight * loss}
