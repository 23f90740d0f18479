"""Logit regression: Ba & Caruana's mimic learning."""
from __future__ import annotations

from torch import Tensor

from .. import functional as KF
from ..models.features import Feats
from .base import Method, MethodContext, Step
from .registry import register_method


@register_method("logits")
class LogitRegression(Method):
    """Regressing the teacher's logits: "Do Deep Nets Really Need to be Deep?", Ba & Caruana,
    NIPS 2014.

    Reference zoo behaviour (kd_losses/logits.py): loss = CE + weight * mean_{b,k}(z_s - z_t)^2
    (``F.mse_loss``). The paper trains the mimic on the L2 logit loss alone, without labels; the
    reference keeps the cross-entropy. The default weight 0.1 is the reference's example-script
    lambda (its argparse default is 1.0).
    """

    paper = "Do Deep Nets Really Need to be Deep?, Ba & Caruana, NIPS 2014"
    url = "https://arxiv.org/abs/1312.6184"

    def __init__(self, ctx: MethodContext, weight: float = 0.1) -> None:
        super().__init__(ctx)
        self.weight = weight

    def forward(self, student: Feats, teacher: Feats | None, step: Step) -> dict[str, Tensor]:
        assert teacher is not None
        return {"logits": self.weight * KF.logits_mse(student["logits"], teacher["logits"])}
