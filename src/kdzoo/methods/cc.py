"""Correlation congruence (CC): match the batch's correlation structure."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from torch import Tensor, nn

from .. import functional as KF
from ..errors import ConfigError
from ..models.features import FeatureRequest, Features
from .base import Method, MethodContext, MethodParams, Step
from .registry import register_method

#: RepDistiller's values where they differ from the reference zoo's (``-b 0.02`` in
#: HobbitLong/RepDistiller@b84f547:scripts/run_cifar_distill.sh); given only for
#: hyper-parameters the user leaves unset.
REPDISTILLER_DEFAULTS: dict[str, Any] = {"weight": 0.02}


@dataclass(frozen=True)
class CCParams(MethodParams):
    weight: float = 100.0
    gamma: float = 0.4
    order: int = 2
    #: the embedding width of ``variant="repdistiller"`` (its ``--feat_dim``)
    feat_dim: int = 128
    variant: Literal["reference", "repdistiller"] = "reference"
    variant_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "repdistiller": REPDISTILLER_DEFAULTS}

    def check(self, method: str) -> None:
        if self.feat_dim < 1:
            raise ConfigError(f"method {method}: feat_dim must be at least 1, got "
                              f"{self.feat_dim}")


@register_method("cc")
class CorrelationCongruence(Method[CCParams]):
    """Correlation congruence: "Correlation Congruence for Knowledge Distillation", Peng et al.,
    ICCV 2019.

    Reference zoo behaviour (AberHu/Knowledge-Distillation-Zoo@65470c8:kd_losses/cc.py,
    train_kd.py): on the L2-normalised pooled features, the B x B kernel sum_{p<=order}
    e^{-2 gamma} (2 gamma)^p / p! * S^p (the order-P Taylor expansion of the Gaussian RBF),
    loss = weight * mean (K_s - K_t)^2. Defaults: weight 100 (example_train_script.sh), gamma
    0.4, order 2. As the reference admits, only correlation congruence is used: no instance
    congruence term and no special mini-batch sampling (the paper adds CE + KD-style instance
    terms and class-aware sampling). No connector: the kernels do not depend on the feature
    widths. ``feat_dim`` is not used.

    ``variant="repdistiller"``: RepDistiller's CC (HobbitLong/RepDistiller@b84f547:
    distiller_zoo/CC.py, train_student.py lines 211-218, helper/loops.py), the code Peng et al.
    gave its author, which is another loss: the pooled features (``feat[-1]``) of student and
    teacher each go through their own ``LinearEmbed`` (a linear layer to ``feat_dim`` = 128,
    PyTorch's default init, no normalisation), BOTH trained with the student; with
    d = |e_s - e_t| per sample, the loss is the mean over consecutive samples (i, i+1) of the
    batch of sum_k d_ik d_(i+1)k (:func:`kdzoo.functional.repdistiller_correlation`), times
    beta = 0.02 (``-b 0.02``, given as ``weight`` when it is left unset), cross-entropy 1, no KD
    (``-r 1 -a 0``). ``gamma`` and ``order`` are not used.
    """

    paper = "Correlation Congruence for Knowledge Distillation, Peng et al., ICCV 2019"
    url = "https://arxiv.org/abs/1904.01802"
    needs = FeatureRequest(pool=True)

    def __init__(self, ctx: MethodContext, params: CCParams) -> None:
        super().__init__(ctx, params)
        if self.params.variant == "repdistiller":
            # created in RepDistiller's order (embed_s, then embed_t)
            self.embed_s = nn.Linear(ctx.infos["student"].pool, self.params.feat_dim)
            self.embed_t = nn.Linear(ctx.infos["teacher"].pool, self.params.feat_dim)

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        student, teacher = features["student"].pool, features["teacher"].pool
        assert student is not None and teacher is not None
        if self.params.variant == "repdistiller":
            # the teacher's features carry no gradient; its embedding learns from the loss
            loss = KF.repdistiller_correlation(self.embed_s(student.flatten(1)),
                                               self.embed_t(teacher.flatten(1)))
            return {"cc": self.params.weight * loss}
        loss = KF.correlation_congruence(student, teacher, self.params.gamma, self.params.order)
        return {"cc": self.params.weight * loss}
