"""Instance relationship graph (IRG): match vertices, edges and transformations of the batch."""
from __future__ import annotations

from torch import Tensor

from .. import functional as KF
from ..models.features import Feats
from .base import Method, MethodContext, Step
from .registry import register_method


@register_method("irg")
class InstanceRelationGraph(Method):
    """Instance relationship graph: "Knowledge Distillation via Instance Relationship Graph",
    Liu et al., CVPR 2019.

    Reference zoo behaviour (kd_losses/irg.py, seed-zoo.md 2.17), one-to-one mode only:
    weight * (w_vert * vertex + w_edge * edge + w_tran * transformation) with
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
    """

    paper = ("Knowledge Distillation via Instance Relationship Graph, Liu et al., CVPR 2019")
    url = ("http://openaccess.thecvf.com/content_CVPR_2019/papers/Liu_Knowledge_Distillation_via_"
           "Instance_Relationship_Graph_CVPR_2019_paper.pdf")
    points = ("stage2", "stage3", "pool", "logits")

    def __init__(self, ctx: MethodContext, weight: float = 1.0, w_vert: float = 0.1,
                 w_edge: float = 5.0, w_tran: float = 5.0) -> None:
        super().__init__(ctx)
        self.weight = weight
        self.w_vert = w_vert
        self.w_edge = w_edge
        self.w_tran = w_tran

    def forward(self, student: Feats, teacher: Feats | None, step: Step) -> dict[str, Tensor]:
        assert teacher is not None
        s, t = student, teacher
        edge = (KF.irg_edge(s["pool"], t["pool"]) + KF.irg_edge(s["stage2"], t["stage2"])
                + KF.irg_edge(s["stage3"], t["stage3"])) / 3.0
        transformation = KF.irg_transformation(s["stage2"], s["stage3"], t["stage2"],
                                               t["stage3"])
        return {
            "irg_vertex": self.weight * self.w_vert * KF.irg_vertex(s["logits"], t["logits"]),
            "irg_edge": self.weight * self.w_edge * edge,
            "irg_transformation": self.weight * self.w_tran * transformation,
        }
