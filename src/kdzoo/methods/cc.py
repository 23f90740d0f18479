"""Correlation congruence (CC): match the batch's Gaussian-RBF correlation matrices."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from torch import Tensor

from .. import functional as KF
from ..models.features import FeatureRequest, Features
from .base import Method, MethodParams, Step
from .registry import register_method


@dataclass(frozen=True)
class CCParams(MethodParams):
    weight: float = 100.0
    gamma: float = 0.4
    order: int = 2


@register_method("cc")
class CorrelationCongruence(Method[CCParams]):
    """Correlation congruence: "Correlation Congruence for Knowledge Distillation", Peng et al.,
    ICCV 2019.

    Reference zoo behaviour (github.com/AberHu/Knowledge-Distillation-Zoo, kd_losses/cc.py): on the
    L2-normalised pooled features, the B x B kernel sum_{p<=order} e^{-2 gamma} (2 gamma)^p / p! *
    S^p (the order-P Taylor expansion of the Gaussian RBF), loss = weight * mean (K_s - K_t)^2.
    Defaults: weight 100 (example script), gamma 0.4, order 2. As the reference admits, only
    correlation congruence is used: no instance congruence term and no special mini-batch sampling
    (the paper adds CE + KD-style instance terms and class-aware sampling). No connector: the
    kernels do not depend on the feature widths.
    """

    paper = "Correlation Congruence for Knowledge Distillation, Peng et al., ICCV 2019"
    url = "https://arxiv.org/abs/1904.01802"
    needs = FeatureRequest(pool=True)

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        loss = KF.correlation_congruence(features["student"].pool, features["teacher"].pool,
                                         self.params.gamma, self.params.order)
        return {"cc": self.params.weight * loss}
