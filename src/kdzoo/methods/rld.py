"""Refined logit distillation (RLD): sample confidence and masked correlation distillation."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from ..functional.logit_kd import refined_logit_distillation
from ..models.features import Features
from ._logit import LogitMethod, LogitParams
from ._warmup import check_warmup, warmup_factor
from .base import Step, non_negative, positive
from .registry import register_method


@dataclass(frozen=True)
class RLDParams(LogitParams):
    ce_weight: float = 1.0
    alpha: float = 1.0   # SCD weight
    beta: float = 8.0    # MCD weight
    temperature: float = 4.0
    same_t: bool = True  # SCD's temperature is `temperature` (--same-t)
    alpha_temperature: float = 1.0  # SCD's temperature when same_t is false (ALPHA_T)
    warmup: int = 20
    standardize: bool = False  # logit standardization (LS, CVPR 2024)
    ctkd: bool = False         # CTKD's learnable temperature (AAAI 2023)

    def check(self, method: str) -> None:
        positive(method, temperature=self.temperature,
                 alpha_temperature=self.alpha_temperature)
        non_negative(method, ce_weight=self.ce_weight, alpha=self.alpha, beta=self.beta)
        check_warmup(method, self.warmup)


@register_method("rld")
class RefinedLogitDistillation(LogitMethod[RLDParams]):
    """Refined logit distillation: "Knowledge Distillation with Refined Logits", Sun, Chen, Lyu,
    Chen, Chen & Wang, ICCV 2025 (arXiv:2408.07703).

    Reference: zju-SWJ/RLD ``mdistiller/distillers/RLD.py`` (``rld_loss``), its defaults in
    ``mdistiller/engine/cfg.py`` (``CFG.RLD``) and ``tools/train.py``
    (https://github.com/zju-SWJ/RLD): loss = ce_weight * CE + min(epoch / warmup, 1) *
    (alpha * SCD + beta * MCD) (:func:`kdzoo.functional.logit_kd.refined_logit_distillation`):
    SCD, at temperature T_a, matches the student's [p(label), rest] to the teacher's
    [p(teacher's top class), rest]; MCD, at temperature T, matches the softmaxes over the classes
    the teacher ranks below the label. ``configs/cifar100/rld/*.yaml`` set only the optimiser, so
    the hyper-parameters are ``CFG.RLD``'s: ce_weight 1, alpha 1, beta 8, T 4, T_a 1, warmup 20,
    and the ``--same-t`` flag of ``tools/train.py`` sets T_a = T. kdzoo's default is that
    ``--same-t`` setting: ``same_t`` True (T_a follows ``temperature``, CTKD's learned one
    included); ``same_t: false`` uses ``alpha_temperature`` (1, the config's ``ALPHA_T``). The
    reference's ``--logit-stand`` is ``standardize: true`` here; its recipe also sets T = T_a to
    the base
    temperature 2 and multiplies alpha and beta by 9.

    The warm-up uses the 1-based epoch of the stage (``warmup`` 0: none, kdzoo only). Masks are
    exact rather than -1e9 fills, and the binary probabilities are taken in log space, so the
    values equal the reference's wherever it is finite.
    """

    paper = "Knowledge Distillation with Refined Logits, Sun et al., ICCV 2025"
    url = "https://github.com/zju-SWJ/RLD"

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        s, t = self.logit_pair(features["student"].logits, features["teacher"].logits)
        temperature = self.temperature(step)
        scd_temperature = temperature if self.params.same_t else self.params.alpha_temperature
        loss = refined_logit_distillation(s, t, step.batch.labels, self.params.alpha,
                                          self.params.beta, temperature, scd_temperature)
        return {"rld": warmup_factor(step.epoch, self.params.warmup) * loss}
