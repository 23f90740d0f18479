"""WTTM: transformed teacher matching weighted per sample by the teacher's smoothness."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..functional.multilevel import weighted_transformed_teacher_matching
from ._transformed import MatchingParams, TransformedMatching
from .base import positive
from .registry import register_method


@dataclass(frozen=True)
class WTTMParams(MatchingParams):
    ce_weight: float = 1.0   # -r
    weight: float = 4.0      # -a (the README's WTTM command)
    exponent: float = 0.2    # --ttm_l
    standardize: bool = False
    ctkd: bool = False

    def check(self, method: str) -> None:
        positive(method, exponent=self.exponent)


@register_method("wttm")
class WeightedTransformedTeacherMatching(TransformedMatching[WTTMParams]):
    """Weighted transformed teacher matching: "Knowledge Distillation Based on Transformed
    Teacher Matching", Zheng & Yang, ICLR 2024; reference github.com/zkxufo/TTM
    (``distiller_zoo/wttm.py``, ``helper/loops.py``, ``train_student.py``, README).

    loss = ce_weight * CE + weight * mean_b [U_l(p_t,b) KL(q_b || softmax(z_s,b))], TTM's
    divergence weighted by the power sum U_l(p_t) = sum_k p_t,k^l of the teacher's prediction
    (:func:`kdzoo.functional.multilevel.weighted_transformed_teacher_matching`).

    Defaults: the README's only WTTM command, ``--add wttm --ttm_l 0.2 -a 4`` (there added to
    CRD, whose ``-b 0.8`` kdzoo leaves to the ``crd`` method): exponent 0.2, weight 4; ce_weight
    1 (``-r``'s default, which that command keeps), on every pair. Neither the README nor any
    script of the repository (zkxufo/TTM at fe457b3 and every earlier commit) gives a
    stand-alone WTTM command; the paper's appendix A.4 lists its per-pair T and weights, and no
    stored copy of it could be read (``docs/differences.md``:
    ttm-wttm-readme-setting-on-every-pair).

    ``standardize`` and ``ctkd`` as for :class:`~kdzoo.methods.ttm.TransformedTeacherMatching`
    (kdzoo's options, not in the reference; with ``ctkd`` the exponent is 1/T).
    """

    paper = "Knowledge Distillation Based on Transformed Teacher Matching, Zheng & Yang, ICLR 2024"
    url = "https://github.com/zkxufo/TTM"
    term = "wttm"

    def matching_loss(self, student: Tensor, teacher: Tensor, exponent: float | Tensor) -> Tensor:
        return weighted_transformed_teacher_matching(student, teacher, exponent)
