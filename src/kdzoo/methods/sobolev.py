"""Sobolev training / Jacobian matching: match the input gradients of the true-class logit."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from .. import functional as KF
from ..models.features import Features
from ._input_grad import true_class_grad
from .base import Method, MethodParams, Step
from .registry import register_method


@dataclass(frozen=True)
class SobolevParams(MethodParams):
    weight: float = 20.0


@register_method("sobolev")
class Sobolev(Method[SobolevParams]):
    """Sobolev training: "Sobolev Training for Neural Networks", Czarnecki, Osindero, Jaderberg,
    Swirszcz & Pascanu, NIPS 2017 (with "Knowledge Transfer with Jacobian Matching", Srinivas &
    Fleuret, ICML 2018, for the normalised form).

    Reference zoo behaviour (AberHu/Knowledge-Distillation-Zoo@65470c8: kd_losses/sobolev.py):
    the images require grad; for each network g_n = d(sum_b z^n_{b,y_b})/d(image), the
    student's with ``create_graph=True`` so the loss trains the student through second-order
    terms, the teacher's detached. Each is L2-normalised per sample over C*H*W and
    L = mean over B*C*H*W of (g^_s - g^_t)^2 (see
    :func:`kdzoo.functional.sobolev_matching`). Only the gradient of the true-class logit is
    matched, not the full Jacobian nor the values (the cross-entropy is the only other term).
    weight = 20 (reference example). The reference README notes it is unstable on its own.
    """

    paper = "Sobolev Training for Neural Networks, Czarnecki et al., NIPS 2017"
    url = "https://arxiv.org/abs/1706.04859"
    needs_input_grad = True

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        images, labels = step.batch.images, step.batch.labels
        student_grad = true_class_grad(features["student"].logits, labels, images,
                                       create_graph=True)
        teacher_grad = true_class_grad(features["teacher"].logits, labels, images,
                                       create_graph=False)
        loss = KF.sobolev_matching(student_grad, teacher_grad.detach())
        return {"sobolev": self.params.weight * loss}
