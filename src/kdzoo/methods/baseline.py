"""Training without a teacher: cross-entropy only (the reference zoo's train_base.py)."""
from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from ..core import STUDENT
from ..models.features import Features
from .base import Method, MethodParams, Step
from .registry import register_method


@register_method("baseline")
class Baseline(Method[MethodParams]):
    """No distillation: the student learns from the labels alone. The loop adds the
    cross-entropy; this method contributes no terms."""

    paper = "Deep Residual Learning for Image Recognition, He et al., CVPR 2016 (no teacher)"
    url = "https://arxiv.org/abs/1512.03385"
    roles = (STUDENT,)

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        return {}
