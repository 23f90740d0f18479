"""Neuron selectivity transfer (NST): match the distribution of channel activation patterns."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from torch import Tensor

from .. import functional as KF
from ..functional import repdistiller as KR
from ..models.features import FeatureInfo, FeatureRequest, Features
from .base import Method, MethodParams, Step
from .registry import register_method

#: RepDistiller's values where they differ from the reference zoo's (``-b 50`` in
#: scripts/run_cifar_distill.sh); given only for hyper-parameters the user leaves unset.
REPDISTILLER_DEFAULTS: dict[str, Any] = {"weight": 50.0}


@dataclass(frozen=True)
class NSTParams(MethodParams):
    weight: float = 10.0
    variant: Literal["reference", "repdistiller"] = "reference"
    variant_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "repdistiller": REPDISTILLER_DEFAULTS}


@register_method("nst")
class NeuronSelectivityTransfer(Method[NSTParams]):
    """Neuron selectivity transfer: "Like What You Like: Knowledge Distill via Neuron Selectivity
    Transfer", Huang & Wang, arXiv 2017.

    Reference zoo behaviour (AberHu/Knowledge-Distillation-Zoo@65470c8: kd_losses/nst.py): on
    the post-ReLU output of the last stage, every channel's spatial map is L2-normalised and the
    squared MMD with the polynomial kernel k(a, b) = (a^T b)^2 (d = 2, c = 0) is taken between the
    student's and the teacher's channels, each of its three terms a mean over B*C*C;
    loss = weight * MMD^2 with the example weight 10 (the paper writes lambda/2). The reference's
    old version (06229d8) computed an MSE between batch-averaged maps instead; this is the kernel
    NST.

    Networks of other widths need no connector: the MMD compares the set of student channels with
    the set of teacher channels, and the sets may have different sizes (each kernel mean is over
    its own C_a * C_b pairs). Maps of other spatial sizes are average-pooled to the smaller one.

    On any network the reference's CIFAR-ResNet stages are its last stage,
    student and teacher aligned from the end, as RepDistiller pairs cross-family networks.

    ``variant="repdistiller"``: RepDistiller's NST (HobbitLong/RepDistiller@b84f547:
    ``distiller_zoo/NST.py``, ``helper/loops.py``, ``scripts/run_cifar_distill.sh``): the same
    per-stage formula (its ``full_loss``; the teacher-teacher term detached, which changes no
    gradient), but on ``feat[1:-1]``, the post-ReLU outputs of ALL stages (as many as both
    networks have, aligned from the end; RepDistiller's ``zip`` aligns from the start, which
    differs only for networks with different stage counts, a pairing it never makes), the taller
    map pooled to the other's height
    (:func:`kdzoo.functional.repdistiller.repdistiller_match_size`), the stages SUMMED, times
    beta = 50 (``-b 50``, given as ``weight`` when it is left unset), cross-entropy 1, no KD.
    """

    paper = ("Like What You Like: Knowledge Distill via Neuron Selectivity Transfer, Huang & Wang, "
             "arXiv 2017")
    url = "https://arxiv.org/abs/1707.01219"
    needs = FeatureRequest.last(1)

    @classmethod
    def feature_requests(cls, params: NSTParams,
                         infos: Mapping[str, FeatureInfo]) -> dict[str, FeatureRequest]:
        if params.variant != "repdistiller":
            return super().feature_requests(params, infos)
        return cls.every_stage_requests(infos)

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        if self.params.variant == "repdistiller":
            losses = [KF.neuron_selectivity_transfer(*KR.repdistiller_match_size(s, t))
                      for s, t in self.stage_pairs(features)]
            return {"nst": sum(losses) * self.params.weight}
        losses = [KF.neuron_selectivity_transfer(*KF.match_spatial_size(s, t))
                  for s, t in self.stage_pairs(features)]
        return {"nst": sum(losses) / len(losses) * self.params.weight}
