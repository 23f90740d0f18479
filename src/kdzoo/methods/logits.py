"""Logit regression: Ba & Caruana's mimic learning."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from torch import Tensor

from .. import functional as KF
from ..models.features import Features
from .base import Method, MethodParams, Step
from .registry import register_method


@dataclass(frozen=True)
class LogitsParams(MethodParams):
    weight: float = 0.1


@register_method("logits")
class LogitRegression(Method[LogitsParams]):
    """Regressing the teacher's logits: "Do Deep Nets Really Need to be Deep?", Ba & Caruana,
    NIPS 2014.

    Reference zoo behaviour (AberHu/Knowledge-Distillation-Zoo@65470c8: kd_losses/logits.py):
    loss = CE + weight * mean_{b,k}(z_s - z_t)^2 (``F.mse_loss``). The paper trains the mimic on
    the L2 logit loss alone, without labels; the reference keeps the cross-entropy. The default
    weight 0.1 is the reference's example-script lambda (example_train_script.sh; its argparse
    default is 1.0).
    """

    paper = "Do Deep Nets Really Need to be Deep?, Ba & Caruana, NIPS 2014"
    url = "https://arxiv.org/abs/1312.6184"

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        loss = KF.logits_mse(features["student"].logits, features["teacher"].logits)
        return {"logits": self.params.weight * loss}
