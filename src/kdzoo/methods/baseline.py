"""Training without a teacher: cross-entropy only (the reference zoo's train_base.py)."""
from __future__ import annotations

from torch import Tensor

from ..models.features import Feats
from .base import Method, MethodContext, Step
from .registry import register_method


@register_method("baseline")
class Baseline(Method):
    """No distillation: the student learns from the labels alone. The loop adds the
    cross-entropy; this method contributes no terms."""

    paper = "Deep Residual Learning for Image Recognition, He et al., CVPR 2016 (no teacher)"
    url = "https://arxiv.org/abs/1512.03385"
    needs_teacher = False

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)

    def forward(self, student: Feats, teacher: Feats | None, step: Step) -> dict[str, Tensor]:
        return {}
