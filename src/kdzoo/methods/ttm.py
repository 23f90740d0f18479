"""TTM: matching the student's plain softmax to a power-transformed teacher."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..functional.multilevel import transformed_teacher_matching
from ._transformed import MatchingParams, TransformedMatching
from .base import positive
from .registry import register_method


@dataclass(frozen=True)
class TTMParams(MatchingParams):
    ce_weight: float = 1.0   # -r
    weight: float = 45.0     # -b
    exponent: float = 0.1    # --ttm_l (gamma in the paper)
    standardize: bool = False
    ctkd: bool = False

    def check(self, method: str) -> None:
        positive(method, exponent=self.exponent)


@register_method("ttm")
class TransformedTeacherMatching(TransformedMatching[TTMParams]):
    """Transformed teacher matching: "Knowledge Distillation Based on Transformed Teacher
    Matching", Zheng & Yang, ICLR 2024; reference github.com/zkxufo/TTM
    (``distiller_zoo/ttm.py``, ``helper/loops.py``, ``train_student.py``, README).

    loss = ce_weight * CE + weight * mean_b KL(q_b || softmax(z_s,b)), with the teacher's
    softmax power-transformed, q = p_t^l / sum_k p_t,k^l (l = 1/T: temperature on the teacher
    side only, no T^2 factor) -- :func:`kdzoo.functional.multilevel.transformed_teacher_matching`.

    Defaults are the README's TTM command (zkxufo/TTM at fe457b3, vgg13 -> vgg8: ``--distill ttm
    --ttm_l 0.1 -r 1 -b 45 -a 0``): exponent 0.1, weight 45, ce_weight 1 (``-r``, also its
    argparse default), on every pair. The paper says its appendix A.4 lists T and beta per
    experiment; no stored copy of it could be read and the repository has no per-pair setting
    (``docs/differences.md``: ttm-wttm-readme-setting-on-every-pair). The solver is the
    repdistiller preset's (``train_student.py``: 240 epochs, lr 0.05, 0.01 for MobileNetV2 and
    ShuffleNet students, drops after 150/180/210, batch 64, weight decay 5e-4, no Nesterov).

    kdzoo's logit options (:mod:`kdzoo.methods._logit`; not in the reference): ``standardize``
    z-scores both logits before the softmaxes; ``ctkd`` learns CTKD's temperature T and uses the
    exponent l = 1/T (so ``exponent`` is then unused).
    """

    paper = "Knowledge Distillation Based on Transformed Teacher Matching, Zheng & Yang, ICLR 2024"
    url = "https://github.com/zkxufo/TTM"
    term = "ttm"

    def matching_loss(self, student: Tensor, teacher: Tensor, exponent: float | Tensor) -> Tensor:
        return transformed_teacher_matching(student, teacher, exponent)
