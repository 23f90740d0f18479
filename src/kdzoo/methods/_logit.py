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

A logit method's ``Params`` subclass :class:`LogitParams` and define ``temperature: float``,
``standardize: bool = False`` and ``ctkd: bool = False`` among their fields; the method
subclasses ``LogitMethod[ItsParams]`` and calls :meth:`LogitMethod.logit_pair` and
:meth:`LogitMethod.temperature`. Methods with only some of these options (TTM, the ctkd method)
use :func:`logit_pair` and :class:`~kdzoo.methods._temperature.CurriculumTemperature` directly.
"""
from __future__ import annotations

from typing import TypeVar

from torch import Tensor

from .. import functional as KF
from ..core import Step
from ._temperature import CurriculumTemperature
from .base import Method, MethodContext, MethodParams


def logit_pair(student: Tensor, teacher: Tensor, standardize: bool) -> tuple[Tensor, Tensor]:
    """The student's and the teacher's logits, standardized when ``standardize`` is on."""
    if standardize:
        return KF.standardize_logits(student), KF.standardize_logits(teacher)
    return student, teacher


class LogitOptions(MethodParams):
    """The logit options, declared for typed reads: every subclass is a dataclass that
    defines them as fields itself, in its own order (the order its hyper-parameters are
    recorded in)."""

    standardize: bool
    ctkd: bool


class LogitParams(LogitOptions):
    """The logit options and the fixed ``temperature``, declared as :class:`LogitOptions`."""

    temperature: float


LP = TypeVar("LP", bound=LogitParams)


class LogitMethod(Method[LP]):
    """A method on logits, with the ``standardize`` and ``ctkd`` options (module docstring)."""

    #: CTKD's learned temperature, when ``ctkd`` is on
    learned_temperature: CurriculumTemperature

    def __init__(self, ctx: MethodContext, params: LP) -> None:
        super().__init__(ctx, params)
        if params.ctkd:
            self.learned_temperature = CurriculumTemperature(params)

    def logit_pair(self, student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
        """The student's and the teacher's logits, standardized when ``standardize`` is on."""
        return logit_pair(student, teacher, self.params.standardize)

    def temperature(self, step: Step) -> float | Tensor:
        """The fixed ``temperature``, or CTKD's learned one (a scalar tensor) when ``ctkd``."""
        if self.params.ctkd:
            return self.learned_temperature(step)
        return self.params.temperature
