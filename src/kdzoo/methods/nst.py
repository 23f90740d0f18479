"""Neuron selectivity transfer (NST): match the distribution of channel activation patterns."""
from __future__ import annotations

from dataclasses import dataclass
from torch import Tensor

from .. import functional as KF
from ..models.features import FeatureRequest, Features
from .base import Method, MethodParams, Step
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

    On any network the reference's CIFAR-ResNet stages are its last stage,
    student and teacher aligned from the end, as RepDistiller pairs cross-family networks.
    """

    paper = ("Like What You Like: Knowledge Distill via Neuron Selectivity Transfer, Huang & Wang, "
             "arXiv 2017")
    url = "https://arxiv.org/abs/1707.01219"
    needs = FeatureRequest.last(1)

    @dataclass
    class Params(MethodParams):
        weight: float = 10.0

    def forward(self, student: Features, teacher: Features | None,
                step: Step) -> dict[str, Tensor]:
        assert teacher is not None
        losses = [KF.neuron_selectivity_transfer(*KF.match_spatial_size(s, t))
                  for s, t in self.stage_pairs(student, teacher)]
        return {"nst": sum(losses) / len(losses) * self.params.weight}
