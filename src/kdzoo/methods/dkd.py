"""Decoupled knowledge distillation (DKD): target-class and non-target-class KD, weighted apart."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from ..functional.logit_kd import decoupled_kd
from ..models.features import Features
from ._logit import LogitMethod, LogitParams
from ._warmup import check_warmup, warmup_factor
from .base import Step, non_negative, positive
from .registry import register_method


@dataclass(frozen=True)
class DKDParams(LogitParams):
    ce_weight: float = 1.0
    alpha: float = 1.0   # TCKD weight
    beta: float = 8.0    # NCKD weight
    temperature: float = 4.0
    warmup: int = 20     # epochs of linear warm-up of the DKD terms (0: none)
    standardize: bool = False  # logit standardization (LS, CVPR 2024)
    ctkd: bool = False         # CTKD's learnable temperature (AAAI 2023)

    def check(self, method: str) -> None:
        positive(method, temperature=self.temperature)
        non_negative(method, ce_weight=self.ce_weight, alpha=self.alpha, beta=self.beta)
        check_warmup(method, self.warmup)


@register_method("dkd")
class DecoupledKD(LogitMethod[DKDParams]):
    """Decoupled knowledge distillation: "Decoupled Knowledge Distillation", Zhao, Cui, Song, Qiu
    & Liang, CVPR 2022.

    Reference: megvii-research/mdistiller, ``mdistiller/distillers/DKD.py`` with the defaults of
    ``mdistiller/engine/cfg.py`` (``CFG.DKD``; https://github.com/megvii-research/mdistiller):
    loss = ce_weight * CE + min(epoch / warmup, 1) * (alpha * TCKD + beta * NCKD), with TCKD and
    NCKD T^2-scaled and averaged over the batch (:func:`kdzoo.functional.logit_kd.decoupled_kd`);
    ce_weight 1, alpha 1, beta 8, T 4, warmup 20 (the CIFAR-100 setting at commit a08d46f; the
    ImageNet configs use beta 0.5, T 1, warmup 1). Per-pair CIFAR-100 configs override beta, and
    kdzoo's recipes (``configs/recipes/logit-methods.yaml``) carry them: 2 for resnet56 ->
    resnet20 and resnet110 -> resnet32 (and resnet110 -> resnet20, the LS authors' DKD cell),
    6 for vgg13 -> vgg8/MobileNetV2 and wrn_40_2 -> wrn_16_2/wrn_40_1. With ``standardize``
    the LS recipes (``configs/recipes/standardization.yaml``) set what LS's ``--logit-stand``
    sets since sunshangquan/logit-standardization-KD 6b58661: alpha = w, beta = the pair's beta
    x w, T = the base temperature, per pair from its logs. The warm-up factor uses the 1-based
    epoch of the stage, as the reference's ``kwargs["epoch"]`` (mdistiller's trainer counts
    epochs from 1); ``warmup`` 0 switches it off (kdzoo only: the reference divides by it).

    Deliberate difference: the target class is masked exactly (and the binary target/rest
    probabilities computed in log space) instead of subtracting 1000 from its logit, so the
    values equal the reference's wherever it is finite, and two-class problems work (mdistiller
    issue #60: with a single non-target class NCKD is 0 with zero gradient, and a confident
    student no longer produces log(0) and an infinite loss).
    """

    paper = "Decoupled Knowledge Distillation, Zhao, Cui, Song, Qiu & Liang, CVPR 2022"
    url = "https://github.com/megvii-research/mdistiller/blob/master/mdistiller/distillers/DKD.py"

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        s, t = self.logit_pair(features["student"].logits, features["teacher"].logits)
        loss = decoupled_kd(s, t, step.batch.labels, self.params.alpha, self.params.beta,
                            self.temperature(step))
        return {"dkd": warmup_factor(step.epoch, self.params.warmup) * loss}
