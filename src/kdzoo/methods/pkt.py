"""Probabilistic knowledge transfer (PKT): match the batch's cosine-similarity distributions."""
from __future__ import annotations

from dataclasses import dataclass
from torch import Tensor

from .. import functional as KF
from ..models.features import FeatureRequest, Features
from .base import Method, MethodParams, Step
from .registry import register_method


@register_method("pkt")
class ProbabilisticKnowledgeTransfer(Method):
    """Probabilistic knowledge transfer: "Learning Deep Representations with Probabilistic
    Knowledge Transfer", Passalis & Tefas, ECCV 2018.

    Reference zoo behaviour (kd_losses/pkt.py, seed-zoo.md 2.6): on the pooled features, the
    cosine kernel (cos + 1) / 2 is turned into row-wise conditional probabilities and the loss
    is mean_{i,j} P^t_ij log((P^t_ij + 1e-6) / (P^s_ij + 1e-6)) -- a mean over the B^2 entries,
    where the paper sums the KL divergences. The loss is tiny, hence the example weight 10000.
    NaNs after normalisation become 0 as in the reference, without touching the given features.
    No connector: the B x B kernels do not depend on the feature widths.
    """

    paper = ("Learning Deep Representations with Probabilistic Knowledge Transfer, "
             "Passalis & Tefas, ECCV 2018")
    url = "https://arxiv.org/abs/1803.10837"
    needs = FeatureRequest(pool=True)

    @dataclass
    class Params(MethodParams):
        weight: float = 10000.0

    def forward(self, student: Features, teacher: Features | None,
                step: Step) -> dict[str, Tensor]:
        assert teacher is not None
        loss = KF.probabilistic_knowledge_transfer(student.pool, teacher.pool)
        return {"pkt": self.params.weight * loss}
