"""Shared plumbing of the methods that compare logits through a softmax (st, kd, dkd, dist, mlkd,
nkd, ...): the two options every one of them offers.

* ``standardize`` -- logit standardization (Sun et al., "Logit Standardization in Knowledge
  Distillation", CVPR 2024; github.com/sunshangquan/logit-standardization-KD): student and
  teacher logits are replaced by their per-sample z-scores before the softmax
  (:func:`kdzoo.functional.standardize_logits`), and the method's temperature becomes the LS
  "base temperature". The LS paper's settings (base temperature 2, KD weight 9, CE 0.1) are a
  recipe, not the default.
* ``ctkd`` -- curriculum temperature (Li et al., "Curriculum Temperature for Knowledge
  Distillation", AAAI 2023; github.com/zhengli97/CTKD): the temperature is a learnable global
  parameter behind a gradient-reversal layer whose strength follows CTKD's curriculum
  (:mod:`kdzoo.methods._temperature`), instead of the fixed ``temperature``.

A logit method declares ``standardize: bool = False`` and ``ctkd: bool = False`` among its
``Params`` and calls :meth:`LogitMethod.logit_pair` and :meth:`LogitMethod.temperature`.
"""
from __future__ import annotations

from torch import Tensor

from .. import functional as KF
from ..core import Step
from .base import Method, MethodContext, MethodParams


class LogitMethod(Method):
    """A method on logits, with the ``standardize`` and ``ctkd`` options (module docstring)."""

    def __init__(self, ctx: MethodContext, params: MethodParams | None = None) -> None:
        super().__init__(ctx, params)
        if getattr(self.params, "ctkd", False):
            from ._temperature import CurriculumTemperature

            self.learned_temperature = CurriculumTemperature(self.params)

    def logit_pair(self, student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
        """The student's and the teacher's logits, standardized when ``standardize`` is on."""
        if getattr(self.params, "standardize", False):
            return KF.standardize_logits(student), KF.standardize_logits(teacher)
        return student, teacher

    def temperature(self, step: Step) -> float | Tensor:
        """The fixed ``temperature``, or CTKD's learned one (a scalar tensor) when ``ctkd``."""
        if getattr(self.params, "ctkd", False):
            return self.learned_temperature(step)
        return self.params.temperature  # type: ignore[attr-defined]
