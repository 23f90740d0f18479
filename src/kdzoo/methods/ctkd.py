"""CTKD: knowledge distillation with a learned, curriculum-scheduled temperature."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from .. import functional as KF
from ..errors import ConfigError
from ..models.features import Features
from ._logit import logit_pair
from ._temperature import CurriculumTemperature
from .base import Method, MethodContext, MethodParams, Step
from .registry import register_method


@dataclass(frozen=True)
class CTKDParams(MethodParams):
    ce_weight: float = 0.1        # -r
    weight: float = 0.9           # -a
    t_start: float = 1.0
    t_end: float = 20.0
    cosine_decay: bool = True
    decay_max: float = 0.0
    decay_min: float = -1.0
    decay_loops: int = 10
    standardize: bool = False     # logit standardization (LS, CVPR 2024)

    def check(self, method: str) -> None:
        if self.decay_loops < 1:
            raise ConfigError(f"method {method}: decay_loops must be >= 1, got "
                              f"{self.decay_loops}")
        if not (self.t_start > 0 and self.t_end >= 0):
            raise ConfigError(f"method {method}: the temperature t_start + t_end * sigmoid(p) "
                              f"needs t_start > 0 and t_end >= 0, got {self.t_start} and "
                              f"{self.t_end}")


@register_method("ctkd")
class CurriculumTemperatureKD(Method[CTKDParams]):
    """Curriculum temperature for KD: "Curriculum Temperature for Knowledge Distillation", Li,
    Li, Yang, Zhao, Song, Luo, Li & Yang, AAAI 2023; reference github.com/zhengli97/CTKD
    (``train_student.py``, ``helper/loops.py``, ``distiller_zoo/KD.py``,
    ``models/temp_global.py``, ``scripts/run_cifar_distill.sh``).

    Hinton's KD whose temperature is learned adversarially (:mod:`kdzoo.methods._temperature`):
    loss = ce_weight * CE + weight * T^2 KL(softmax(z_t/T) || softmax(z_s/T)) ('batchmean'), with
    T = t_start + t_end * sigmoid(p), p a learnable scalar (initialised to 1) behind a
    gradient-reversal layer of strength lambda(epoch), cosine from 0 to -1 over the first
    ``decay_loops`` epochs. The T^2 factor is part of the graph, so p's gradient includes it, as
    in the reference's ``DistillKL``.

    Defaults are the reference script's KD + CTKD command (``--distill kd -r 0.1 -a 0.9 -b 0
    --have_mlp 1 --mlp_name global --t_start 1 --t_end 20 --cosine_decay 1 --decay_max 0
    --decay_min -1 --decay_loops 10``): ce_weight 0.1, weight 0.9. The script's ``--kd_T 4`` is
    not used once the temperature is learned, so there is no ``temperature`` here. p trains with
    the student's optimiser (SGD, the run's learning rate, momentum and weight decay), as the
    reference's ``trainable_list``. ``standardize`` is the logit standardization option of
    :mod:`kdzoo.methods._logit` (LS's paper pairs it with CTKD). The other logit methods get the
    same learned temperature with their own ``ctkd=True``.
    """

    paper = ("Curriculum Temperature for Knowledge Distillation, Li, Li, Yang, Zhao, Song, "
             "Luo, Li & Yang, AAAI 2023")
    url = "https://github.com/zhengli97/CTKD"

    def __init__(self, ctx: MethodContext, params: CTKDParams) -> None:
        super().__init__(ctx, params)
        self.learned_temperature = CurriculumTemperature(params)

    def temperature(self, step: Step) -> Tensor:
        return self.learned_temperature(step)

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        s, t = logit_pair(features["student"].logits, features["teacher"].logits,
                          self.params.standardize)
        loss = KF.soft_target(s, t, self.temperature(step))
        return {"ctkd": self.params.weight * loss}
