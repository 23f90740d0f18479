"""Neuron selectivity transfer (NST): match the distribution of channel activation patterns."""
from __future__ import annotations

from torch import Tensor

from .. import functional as KF
from ..models.features import Feats
from .base import Method, MethodContext, Step
from .registry import register_method


@register_method("nst")
class NeuronSelectivityTransfer(Method):
    """Neuron selectivity transfer: "Like What You Like: Knowledge Distill via Neuron Selectivity
    Transfer", Huang & Wang, arXiv 2017.

    Reference zoo behaviour (kd_losses/nst.py, seed-zoo.md 2.5): on the post-ReLU output of the
    last stage, every channel's spatial map is L2-normalised and the squared MMD with the
    polynomial kernel k(a, b) = (a^T b)^2 (d = 2, c = 0) is taken between the student's and the
    teacher's channels, each of its three terms a mean over B*C*C; loss = weight * MMD^2 with the
    example weight 10 (the paper writes lambda/2). The reference's old version (06229d8) computed
    an MSE between batch-averaged maps instead; this is the kernel NST.

    Networks of other widths need no connector: the MMD compares the set of student channels with
    the set of teacher channels, and the sets may have different sizes (each kernel mean is over
    its own C_a * C_b pairs). Maps of other spatial sizes are average-pooled to the smaller one.
    """

    paper = ("Like What You Like: Knowledge Distill via Neuron Selectivity Transfer, Huang & Wang, "
             "arXiv 2017")
    url = "https://arxiv.org/abs/1707.01219"
    points = ("stage3",)

    def __init__(self, ctx: MethodContext, weight: float = 10.0) -> None:
        super().__init__(ctx)
        self.weight = weight

    def forward(self, student: Feats, teacher: Feats | None, step: Step) -> dict[str, Tensor]:
        assert teacher is not None
        losses = [KF.neuron_selectivity_transfer(*KF.match_spatial_size(student[k], teacher[k]))
                  for k in self.points]
        return {"nst": sum(losses) / len(losses) * self.weight}
