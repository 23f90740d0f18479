"""TTM: matching the student's plain softmax to a power-transformed teacher."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ..functional.multilevel import transformed_teacher_matching
from ..models.features import Features
from ._logit import LogitMethod
from .base import MethodParams, Step, positive
from .registry import register_method


@register_method("ttm")
class TransformedTeacherMatching(LogitMethod):
    """Transformed teacher matching: "Knowledge Distillation Based on Transformed Teacher
    Matching", Zheng & Yang, ICLR 2024; reference github.com/zkxufo/TTM
    (``distiller_zoo/ttm.py``, ``helper/loops.py``, ``train_student.py``, README).

    loss = ce_weight * CE + weight * mean_b KL(q_b || softmax(z_s,b)), with the teacher's
    softmax power-transformed, q = p_t^l / sum_k p_t,k^l (l = 1/T: temperature on the teacher
    side only, no T^2 factor) -- :func:`kdzoo.functional.multilevel.transformed_teacher_matching`.

    Defaults are the README's TTM command (vgg13 -> vgg8: ``--distill ttm --ttm_l 0.1 -r 1 -b 45
    -a 0``): exponent 0.1, weight 45, ce_weight 1 (``-r``, also its argparse default).

    kdzoo's logit options (:mod:`kdzoo.methods._logit`; not in the reference): ``standardize``
    z-scores both logits before the softmaxes; ``ctkd`` learns CTKD's temperature T and uses the
    exponent l = 1/T (so ``exponent`` is then unused).
    """

    paper = "Knowledge Distillation Based on Transformed Teacher Matching, Zheng & Yang, ICLR 2024"
    url = "https://github.com/zkxufo/TTM"
    #: the pure loss and the name of the term it gives
    loss_fn: ClassVar[Callable[[Tensor, Tensor, float | Tensor], Tensor]] = \
        staticmethod(transformed_teacher_matching)  # type: ignore[assignment]
    term: ClassVar[str] = "ttm"

    @dataclass
    class Params(MethodParams):
        ce_weight: float = 1.0   # -r
        weight: float = 45.0     # -b
        exponent: float = 0.1    # --ttm_l (gamma in the paper)
        standardize: bool = False
        ctkd: bool = False

        def check(self, method: str) -> None:
            positive(method, exponent=self.exponent)

    def exponent(self, step: Step) -> float | Tensor:
        """l, or 1/T of CTKD's learned temperature when ``ctkd``."""
        if getattr(self.params, "ctkd", False):
            return 1.0 / self.temperature(step)
        return self.params.exponent  # type: ignore[attr-defined]

    def forward(self, student: Features, teacher: Features | None,
                step: Step) -> dict[str, Tensor]:
        assert teacher is not None
        s, t = self.logit_pair(student.logits, teacher.logits)
        loss = type(self).loss_fn(s, t, self.exponent(step))
        return {self.term: self.params.weight * loss}  # type: ignore[attr-defined]
