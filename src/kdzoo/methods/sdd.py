"""Scale decoupled distillation (SDD): KD/DKD/NKD on the logits of a spatial pyramid of regions."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..functional.logit_kd import scale_decoupled_kd, spatial_pyramid_pool
from ..models.features import FeatureRequest, Features
from ._logit import LogitMethod
from .base import MethodParams, Step, positive
from .dkd import check_warmup, warmup_factor
from .kd import non_negative
from .registry import register_method

#: The pyramids of the reference's ``--M`` option.
SCALES = {"1": (1,), "1,2": (1, 2), "1,2,4": (1, 2, 4)}
#: The reference's defaults per base loss (mdistiller's ``CFG.KD`` / ``CFG.DKD``, which the
#: CIFAR-100 configs of the SDD repository do not override, and ``train_origin.py --warmup``):
#: (ce_weight, weight, warmup). SD-KD applies no warm-up (it is commented out in ``SDD_KD``).
BASE_DEFAULTS = {"kd": (0.1, 0.9, 0), "dkd": (1.0, 1.0, 20), "nkd": (1.0, 1.0, 20)}


@register_method("sdd")
class ScaleDecoupledDistillation(LogitMethod):
    """Scale decoupled distillation: "Scale Decoupled Distillation", Wei, Luo & Luo, CVPR 2024.

    Reference: shicaiwei123/SDD-CVPR2024 (https://github.com/shicaiwei123/SDD-CVPR2024):
    ``mdistiller/models/cifar/utils.py`` (``SPP``) and the ``*_sdd`` models' ``forward``, and the
    losses ``sdd_kd_loss`` (``mdistiller/distillers/KD.py``), ``multi_dkd``
    (``SDD_DKD.py``) and ``multi_nkd_loss`` (``SDD_nkd.py``); configs
    ``configs/cifar100/sdd_{kd,dkd,nkd}/*.yaml``, ``train_origin.py`` and the run scripts
    ``teacher_*.sh``.

    The map each network averages into its pooled feature (``Features.pre_pool``) is pooled to a
    4 x 4 grid and from it to every scale of ``scales`` (the reference's ``--M``; default
    "1,2,4": 1 + 4 + 16 = 21 regions, region 0 the global one), and every region's pooled
    feature goes through the network's own classifier (``classifier_layer()``; the frozen
    teacher's without gradient). The base loss (``base``) is computed for every region of every
    sample and weighted 2 where the teacher is right on the global region and wrong on the local
    one or the reverse, 1 elsewhere, then summed and divided by B * regions
    (:func:`kdzoo.functional.logit_kd.scale_decoupled_kd`); the result is multiplied by
    ``weight`` and by the warm-up factor min(epoch / warmup, 1). With ``scales: "1"`` this is the
    base method on the global logits, as the reference's ``--M [1]`` branch.

    Defaults are the main CIFAR-100 setting: SD-DKD (the README's example and the method of the
    paper's main tables) with M = [1, 2, 4]. The per-base hyper-parameters default (None) to the
    reference's: ``kd`` ce_weight 0.1, weight 0.9 (``CFG.KD``), no warm-up; ``dkd`` ce_weight 1,
    alpha 1, beta 8, warm-up 20 (``CFG.DKD``, ``--warmup 20``); ``nkd`` ce_weight 1 and warm-up
    20, its gamma being ``beta`` (8) and its temperature ``temperature`` (4), because
    ``SDD_nkd.py`` reads ``cfg.DKD.BETA`` and ``cfg.DKD.T``. T is 4 for every base. The SDD
    repository's ``cfg.py`` is not in the stored index; its CIFAR configs set no loss keys, so
    these are mdistiller's ``cfg.py`` defaults, on which the repository is built.

    Deliberate differences: the NKD base uses the corrected non-target mask (``SDD_nkd.py``
    keeps the target class in the non-target softmax, the bug fixed in cls_KD issue #16); the
    DKD base masks exactly instead of subtracting 1000 (see ``dkd``); and a non-finite loss is
    not silently replaced by 0 as the reference's guard does. Networks whose pooled feature is
    not the average of a map (torchvision adapters) are refused before the run.
    """

    paper = "Scale Decoupled Distillation, Wei, Luo & Luo, CVPR 2024"
    url = "https://github.com/shicaiwei123/SDD-CVPR2024"
    needs = FeatureRequest(pre_pool=True)

    @dataclass
    class Params(MethodParams):
        base: Literal["kd", "dkd", "nkd"] = "dkd"
        scales: Literal["1", "1,2", "1,2,4"] = "1,2,4"
        ce_weight: float | None = None  # None: the base's (kd 0.1, else 1)
        weight: float | None = None     # None: the base's (kd 0.9, else 1)
        temperature: float = 4.0
        alpha: float = 1.0   # DKD's TCKD weight
        beta: float = 8.0    # DKD's NCKD weight; NKD's gamma
        warmup: int | None = None       # None: the base's (kd 0: none, else 20 epochs)
        standardize: bool = False  # logit standardization (LS, CVPR 2024)
        ctkd: bool = False         # CTKD's learnable temperature (AAAI 2023)

        def check(self, method: str) -> None:
            positive(method, temperature=self.temperature)
            non_negative(method, alpha=self.alpha, beta=self.beta)
            non_negative(method, ce_weight=self.ce_weight, weight=self.weight)  # type: ignore
            check_warmup(method, self.warmup)  # type: ignore[arg-type]

        def __post_init__(self) -> None:
            # None: the base's reference value, resolved here so the run records it
            ce_weight, weight, warmup = BASE_DEFAULTS.get(self.base, BASE_DEFAULTS["dkd"])
            self.ce_weight = ce_weight if self.ce_weight is None else self.ce_weight
            self.weight = weight if self.weight is None else self.weight
            self.warmup = warmup if self.warmup is None else self.warmup

    def region_logits(self, student: Features, teacher: Features,
                      step: Step) -> tuple[Tensor, Tensor]:
        """The (B, N, K) logits of every pyramid region, student's with gradient, teacher's
        without."""
        assert step.student is not None and step.teacher is not None
        assert student.pre_pool is not None, "the student's pre-pool map was not requested"
        assert teacher.pre_pool is not None, (
            "the teacher's pre-pool map is missing (a teacher run in chunks must keep it)")
        scales = SCALES[self.params.scales]  # type: ignore[attr-defined]
        s = step.student.classifier_layer()(spatial_pyramid_pool(student.pre_pool, scales))
        with torch.no_grad():
            t = step.teacher.classifier_layer()(spatial_pyramid_pool(teacher.pre_pool, scales))
        return s, t

    def forward(self, student: Features, teacher: Features | None,
                step: Step) -> dict[str, Tensor]:
        assert teacher is not None
        p = self.params
        s, t = self.logit_pair(*self.region_logits(student, teacher, step))
        loss = scale_decoupled_kd(s, t, step.batch.labels, p.base,  # type: ignore[attr-defined]
                                  self.temperature(step), p.alpha, p.beta)  # type: ignore
        factor = p.weight * warmup_factor(step.epoch, p.warmup)  # type: ignore[attr-defined]
        return {"sdd": factor * loss}
