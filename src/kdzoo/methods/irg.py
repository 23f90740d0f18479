"""Instance relationship graph (IRG): match vertices, edges and transformations of the batch."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from .. import functional as KF
from ..models.features import FeatureRequest, Features
from .base import Method, MethodParams, Step
from .registry import register_method


@dataclass(frozen=True)
class IRGParams(MethodParams):
    weight: float = 1.0
    w_vert: float = 0.1
    w_edge: float = 5.0
    w_tran: float = 5.0


@register_method("irg")
class InstanceRelationGraph(Method[IRGParams]):
    """Instance relationship graph: "Knowledge Distillation via Instance Relationship Graph",
    Liu et al., CVPR 2019.

    Reference zoo behaviour (AberHu/Knowledge-Distillation-Zoo@65470c8: kd_losses/irg.py),
    one-to-one mode only: weight * (w_vert * vertex + w_edge * edge + w_tran * transformation) with
    vertex = mse(logits); edge = the mean over (pool, stage2, stage3) of the MSE between the
    max-normalised B x B squared-distance matrices; transformation = MSE between the per-sample,
    max-normalised squared distances from stage2 (pooled to stage3's size) to stage3 (adjacent
    channel pairs averaged). Defaults: weight 1, w_vert 0.1, w_edge 5, w_tran 5.

    The reference's transformation assumes stage3 has exactly twice stage2's channels and is
    spatially smaller (quirk 13); kdzoo generalises it to any shapes (see
    :func:`kdzoo.functional.irg_transformation`), keeping the reference's result where the
    assumption holds. Every term compares logits, B x B matrices or per-sample scalars, so
    student and teacher may have other widths without a connector. The three parts are logged
    as ``irg_vertex``, ``irg_edge`` and ``irg_transformation``; their sum is the reference loss.

    On any network the reference's CIFAR-ResNet stages are its last two stages (with the pooled
    feature), student and teacher aligned from the end, as RepDistiller pairs cross-family
    networks.
    """

    paper = ("Knowledge Distillation via Instance Relationship Graph, Liu et al., CVPR 2019")
    url = ("http://openaccess.thecvf.com/content_CVPR_2019/papers/Liu_Knowledge_Distillation_via_"
           "Instance_Relationship_Graph_CVPR_2019_paper.pdf")
    needs = FeatureRequest.last(2, pool=True)

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        p = self.params
        student, teacher = features["student"], features["teacher"]
        (s_mid, t_mid), (s_last, t_last) = self.stage_pairs(features)
        edge = (KF.irg_edge(student.pool, teacher.pool) + KF.irg_edge(s_mid, t_mid)
                + KF.irg_edge(s_last, t_last)) / 3.0
        transformation = KF.irg_transformation(s_mid, s_last, t_mid, t_last)
        return {
            "irg_vertex": p.weight * p.w_vert * KF.irg_vertex(student.logits, teacher.logits),
            "irg_edge": p.weight * p.w_edge * edge,
            "irg_transformation": p.weight * p.w_tran * transformation,
        }
