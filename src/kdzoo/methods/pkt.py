"""Probabilistic knowledge transfer (PKT): match the batch's cosine-similarity distributions."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from torch import Tensor

from .. import functional as KF
from ..models.features import FeatureRequest, Features
from .base import Method, MethodParams, Step
from .registry import register_method

#: RepDistiller's values where they differ from the reference zoo's (``-b 30000`` in
#: scripts/run_cifar_distill.sh); given only for hyper-parameters the user leaves unset.
REPDISTILLER_DEFAULTS: dict[str, Any] = {"weight": 30000.0}
#: RepDistiller's ``cosine_similarity_loss`` eps (the reference zoo's is 1e-6).
REPDISTILLER_EPS = 1e-7


@dataclass(frozen=True)
class PKTParams(MethodParams):
    weight: float = 10000.0
    variant: Literal["reference", "repdistiller"] = "reference"
    variant_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "repdistiller": REPDISTILLER_DEFAULTS}


@register_method("pkt")
class ProbabilisticKnowledgeTransfer(Method[PKTParams]):
    """Probabilistic knowledge transfer: "Learning Deep Representations with Probabilistic
    Knowledge Transfer", Passalis & Tefas, ECCV 2018.

    Reference zoo behaviour (AberHu/Knowledge-Distillation-Zoo@65470c8: kd_losses/pkt.py): on
    the pooled features, the cosine kernel (cos + 1) / 2 is turned into row-wise conditional
    probabilities and the loss is mean_{i,j} P^t_ij log((P^t_ij + 1e-6) / (P^s_ij + 1e-6)) -- a
    mean over the B^2 entries, where the paper sums the KL divergences. The loss is tiny, hence the
    example weight 10000. NaNs after normalisation become 0 as in the reference, without touching
    the given features. No connector: the B x B kernels do not depend on the feature widths.

    ``variant="repdistiller"``: RepDistiller's PKT (HobbitLong/RepDistiller@b84f547:
    ``distiller_zoo/PKT.py``, ``helper/loops.py``, ``scripts/run_cifar_distill.sh``): the same
    formula and point (``feat[-1]``, the pooled feature) with RepDistiller's eps 1e-7 in the
    normalisation and the logarithm (instead of 1e-6), times beta = 30000 (``-b 30000``, given as
    ``weight`` when it is left unset), cross-entropy 1, no KD.
    """

    paper = ("Learning Deep Representations with Probabilistic Knowledge Transfer, "
             "Passalis & Tefas, ECCV 2018")
    url = "https://arxiv.org/abs/1803.10837"
    needs = FeatureRequest(pool=True)

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        student, teacher = features["student"].pool, features["teacher"].pool
        if self.params.variant == "repdistiller":
            loss = KF.probabilistic_knowledge_transfer(student, teacher, eps=REPDISTILLER_EPS)
            return {"pkt": self.params.weight * loss}
        loss = KF.probabilistic_knowledge_transfer(student, teacher)
        return {"pkt": self.params.weight * loss}
