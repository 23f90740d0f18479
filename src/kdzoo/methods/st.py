"""Soft targets: Hinton et al.'s knowledge distillation."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from torch import Tensor

from .. import functional as KF
from ..models.features import Features
from ._logit import LogitMethod, LogitParams
from .base import Step
from .registry import register_method


@dataclass(frozen=True)
class STParams(LogitParams):
    weight: float = 0.1
    temperature: float = 4.0
    standardize: bool = False  # logit standardization (LS, CVPR 2024)
    ctkd: bool = False         # CTKD's learnable temperature (AAAI 2023)


@register_method("st")
class SoftTarget(LogitMethod[STParams]):
    """Soft targets: "Distilling the Knowledge in a Neural Network", Hinton, Vinyals & Dean, NIPS DL
    Workshop 2014.

    Reference zoo behaviour (AberHu/Knowledge-Distillation-Zoo@65470c8: kd_losses/st.py):
    loss = CE + weight * T^2 * KL(p_t || p_s) with 'batchmean'; no (1 - alpha) factor on the
    cross-entropy. T = 4. The default weight 0.1 is the reference's example-script lambda
    (example_train_script.sh; its argparse default is 1.0). ``standardize`` and ``ctkd``
    are the logit options of :mod:`kdzoo.methods._logit`.
    """

    paper = "Distilling the Knowledge in a Neural Network, Hinton et al., NIPS-W 2014"
    url = "https://arxiv.org/abs/1503.02531"

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        s, t = self.logit_pair(features["student"].logits, features["teacher"].logits)
        loss = KF.soft_target(s, t, self.temperature(step))
        return {"st": self.params.weight * loss}
