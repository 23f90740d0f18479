"""FSP: match the "flow of solution procedure" matrices between consecutive layers, in an
initialisation stage before ordinary training."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from torch import Tensor

from .. import functional as KF
from ..models.features import FeatureInfo, FeatureRequest, Features
from ._feature_maps import (InitParams, InitThenCrossEntropy, check_init_settings, connect,
                            connector_key, width_connectors)
from .base import MethodContext, Step
from .registry import register_method

#: RepDistiller's values where they differ from the reference zoo's, given only for
#: hyper-parameters the user leaves unset (HobbitLong/RepDistiller@b84f547): ``--init_epochs
#: 30`` and the initialisation at its ``--learning_rate`` 0.05 (train_student.py,
#: helper/pretrain.py; 0.01 for MobileNetV2 and ShuffleNet students comes from a recipe). Its
#: loss is used unweighted in the initialisation, so the weight stays 1 (its ``-b 50``
#: multiplies the ``loss_kd = 0`` of the main stage).
REPDISTILLER_DEFAULTS: dict[str, Any] = {"weight": 1.0, "init_epochs": 30, "init_lr": 0.05}


@dataclass(frozen=True)
class FSPParams(InitParams):
    weight: float = 1.0
    init_epochs: int = 50
    init_lr: float = 0.01
    variant: Literal["reference", "repdistiller"] = "reference"
    variant_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "repdistiller": REPDISTILLER_DEFAULTS}

    def check(self, method: str) -> None:
        check_init_settings(method, self.init_epochs, self.init_lr)


@register_method("fsp")
class FlowOfSolutionProcedure(InitThenCrossEntropy[FSPParams]):
    """FSP matrices: "A Gift from Knowledge Distillation: Fast Optimization, Network Minimization
    and Transfer Learning", Yim, Joo, Bae & Kim, CVPR 2017.

    Reference zoo behaviour (AberHu/Knowledge-Distillation-Zoo@65470c8: kd_losses/fsp.py and
    train_kd.py):

    * G(a, b) = a_flat b_flat^T / (H*W) for the post-ReLU pairs (stem, stage1), (stage1, stage2),
      (stage2, stage3), the larger map average-pooled to the smaller; per pair the mean over
      B*C_a*C_b of (G_s - G_t)^2; loss = weight * (L1 + L2 + L3) / 3 with weight 1.
    * Two stages: ``init_epochs`` (50) epochs of the FSP loss alone -- the cross-entropy kept with
      weight 0, so the classifier gets zero gradients and weight decay -- at lr ``init_lr`` /10
      /100 for 60% / 20% / 20% of them (0.01 / 0.001 / 0.0001 for 30 / 10 / 10), without
      evaluation and with the same SGD optimiser (momentum included) as the main stage; then the
      configured run with the cross-entropy only. The paper likewise trains on the FSP loss first
      and on the main task afterwards, but sums the squared matrix entries.

    Other widths: FSP matrices are C_first x C_second, so student and teacher matrices can only
    be compared when the widths agree (RepDistiller refuses other widths). At every point whose
    channel count differs from the teacher's, a 1x1 convolution + BatchNorm connector maps the
    student's map to the teacher's width before its FSP matrices are formed (one connector per
    point, shared by the two pairs it belongs to); it is trained in the initialisation stage with
    the student. Points of equal width keep the reference's exact behaviour.

    On any network the reference's CIFAR-ResNet stages are its stem and the last three stages,
    student and teacher aligned from the end, as RepDistiller pairs cross-family networks.

    ``variant="repdistiller"``: RepDistiller's FSP (HobbitLong/RepDistiller@b84f547:
    distiller_zoo/FSP.py, train_student.py lines 254-263, helper/pretrain.py, helper/loops.py):

    * on ``feat[:-1]``, the stem and the post-ReLU outputs of ALL stages (as many as both
      networks have, aligned from the end), the consecutive pairs' FSP matrices (the taller map
      pooled to the other's height) compared by their mean squared difference and the pairs
      SUMMED (:func:`kdzoo.functional.repdistiller_fsp`), times ``weight`` (1: RepDistiller uses
      the loss unweighted there);
    * :func:`~kdzoo.methods._feature_maps.repdistiller_init_then_ce_stages`: 30 epochs of that
      loss alone at the constant lr ``init_lr`` (0.05; 0.01 for MobileNetV2 / ShuffleNet
      students, by recipe) with an optimiser of its own that leaves the classifier untouched,
      then the run's 240 epochs with the cross-entropy only and a new optimiser (``-a 0``; its
      ``-b 50`` multiplies the main stage's ``loss_kd = 0``).

    RepDistiller refuses student and teacher maps of other widths (wrn_40_2 -> wrn_40_1 is
    "N/A" in its table); kdzoo gives them the connectors above (a deliberate difference,
    ``fsp-connectors-for-other-widths`` in docs/differences.md).
    """

    paper = ("A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and "
             "Transfer Learning, Yim et al., CVPR 2017")
    url = ("https://openaccess.thecvf.com/content_cvpr_2017/html/"
           "Yim_A_Gift_From_CVPR_2017_paper.html")
    needs = FeatureRequest.last(3, stem=True)

    @classmethod
    def feature_requests(cls, params: FSPParams,
                         infos: Mapping[str, FeatureInfo]) -> dict[str, FeatureRequest]:
        if params.variant != "repdistiller":
            return super().feature_requests(params, infos)
        request = FeatureRequest(stages="all", stem=True).resolve(
            *(infos.get(r.name) for r in cls.roles))
        return {role.name: request for role in cls.roles}

    def __init__(self, ctx: MethodContext, params: FSPParams) -> None:
        super().__init__(ctx, params)
        self.connectors = width_connectors(ctx, self.requests["student"], stem=True)

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        student, teacher = features["student"], features["teacher"]
        assert student.stem is not None and teacher.stem is not None
        positions = self.requests["student"].positions
        keys = ["stem"] + [connector_key(self.ctx.infos["student"], p) for p in positions]
        s_maps = [student.stem, *student.maps(positions)]
        t_maps = [teacher.stem, *teacher.maps(self.requests["teacher"].positions)]
        mapped = [connect(self.connectors, k, m) for k, m in zip(keys, s_maps)]
        if self.params.variant == "repdistiller":
            return {"fsp": KF.repdistiller_fsp(mapped, t_maps) * self.params.weight}
        # consecutive pairs: (stem, first stage), (first, second), (second, third)
        losses = [KF.fsp(mapped[i], mapped[i + 1], t_maps[i], t_maps[i + 1])
                  for i in range(len(mapped) - 1)]
        return {"fsp": sum(losses) / len(losses) * self.params.weight}
