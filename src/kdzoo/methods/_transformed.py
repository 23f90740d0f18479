"""Shared plumbing of transformed teacher matching, TTM and its weighted form WTTM (Zheng & Yang,
"Knowledge Distillation Based on Transformed Teacher Matching", ICLR 2024): the teacher's
softmax is power-transformed with the exponent l (= 1/T), the student's is plain, and the term
is ``weight`` times the method's loss. The logit options of :mod:`kdzoo.methods._logit`
(kdzoo's, not in the reference): ``standardize`` z-scores both logits before the softmaxes;
``ctkd`` learns CTKD's temperature T and uses the exponent l = 1/T (``exponent`` is then
unused)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, TypeVar

from torch import Tensor

from ..models.features import Features
from ._logit import LogitOptions, logit_pair
from ._temperature import CurriculumTemperature
from .base import Method, MethodContext, Step


class MatchingParams(LogitOptions):
    """What :class:`TransformedMatching` reads, declared as :class:`LogitOptions` declares the
    logit options: ``weight`` and ``exponent`` (l) are fields of each method's dataclass."""

    weight: float
    exponent: float


MP = TypeVar("MP", bound=MatchingParams)


class TransformedMatching(Method[MP]):
    """TTM's and WTTM's method: ``{term: weight * matching_loss(student, teacher, l)}``."""

    #: the name of the term
    term: ClassVar[str] = ""
    #: CTKD's learned temperature, when ``ctkd`` is on
    learned_temperature: CurriculumTemperature

    def __init__(self, ctx: MethodContext, params: MP) -> None:
        super().__init__(ctx, params)
        if params.ctkd:
            self.learned_temperature = CurriculumTemperature(params)

    def matching_loss(self, student: Tensor, teacher: Tensor, exponent: float | Tensor) -> Tensor:
        """The method's pure loss on the (optionally standardized) logits."""
        raise NotImplementedError

    def exponent(self, step: Step) -> float | Tensor:
        """l, or 1/T of CTKD's learned temperature when ``ctkd``."""
        if self.params.ctkd:
            return 1.0 / self.learned_temperature(step)
        return self.params.exponent

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        s, t = logit_pair(features["student"].logits, features["teacher"].logits,
                          self.params.standardize)
        loss = self.matching_loss(s, t, self.exponent(step))
        return {self.term: self.params.weight * loss}
