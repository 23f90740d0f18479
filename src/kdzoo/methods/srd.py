"""SRD: regress the teacher's last feature map, and feed the regressed student feature to the
teacher's classifier."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..models.features import FeatureRequest, Features
from ._networks import classifier_layer
from .base import Method, MethodContext, MethodParams, Step
from .registry import register_method


class TransferConv(nn.Module):
    """SRD's ``transfer_conv``: a bias-free 1x1 convolution to the teacher's width, BatchNorm and
    ReLU; the convolution drawn from N(0, 2 / out_channels), BatchNorm weight 1 and bias 0."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.Connectors = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU())
        conv, bn = self.Connectors[0], self.Connectors[1]
        nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / out_channels))
        nn.init.ones_(bn.weight)
        nn.init.zeros_(bn.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.Connectors(x)


def pooled_feature_mse(student_map: Tensor, teacher_map: Tensor) -> Tensor:
    """SRD's ``statm_loss``: the squared gap of the per-channel spatial means, averaged over the
    channels and then the samples (= the MSE of the globally average-pooled maps; the spatial
    sizes may differ)."""
    return F.mse_loss(student_map.mean(dim=(2, 3)), teacher_map.mean(dim=(2, 3)))


@dataclass(frozen=True)
class SRDParams(MethodParams):
    weight: float = 1.0
    feature_weight: float = 1.0
    ce_weight: float = 1.0

    def check(self, method: str) -> None:
        for key in ("weight", "feature_weight", "ce_weight"):
            if getattr(self, key) < 0:
                raise ConfigError(f"method {method}: {key} must be 0 or more, got "
                                  f"{getattr(self, key)}")


@register_method("srd")
class SoftmaxRegressionDistillation(Method[SRDParams]):
    """Softmax regression representation learning (SRD): "Knowledge Distillation via Softmax
    Regression Representation Learning", Yang, Martinez, Bulat & Tzimiropoulos, ICLR 2021, as
    implemented in its open-set semi-supervised extension "Knowledge Distillation Meets Open-Set
    Semi-Supervised Learning", Yang, Zhu, Bulat, Martinez & Tzimiropoulos, arXiv 2205.06701, 2022.
    Reference: jingyang2017/SRD_ossl (https://github.com/jingyang2017/SRD_ossl):
    ``distiller_zoo/AIN.py`` (``transfer_conv``, ``statm_loss``), ``helper/loops.py``
    (``opt.distill == 'srd'``), ``train_student.py``, ``models/resnet.py`` / ``models/wrn.py``
    (the teacher's ``forward(feat_s=...)``), defaults from ``runs/run_kd_res.sh`` and
    ``runs/run_kd_wrn.sh`` (``--distill srd -a 0 -b 1``, ``-r`` 1).

    On the map each network globally pools into its classifier (``pre_pool``: RepDistiller's
    ``feat[-2]`` for the reference's ResNets and ShuffleV1, and what SRD_ossl's WRN redefines its
    ``feat[-2]`` to be, the head's BatchNorm-ReLU of the last stage; for networks outside the
    reference's choices whose classifier pools a 1x1 head, ShuffleV2 and MobileNetV2, that head's
    output, which the teacher's classifier takes), the student's map goes through
    :class:`TransferConv` (1x1 convolution + BatchNorm + ReLU to the teacher's width), and

        loss = weight * (feature_weight * MSE(mean_hw(connector(s)), mean_hw(t))
                         + MSE(teacher_classifier(mean_hw(connector(s))), teacher logits)),

    plus the cross-entropy with ``ce_weight`` and no KL term (``-a 0``). The teacher's classifier
    is its own, frozen: the gradient flows through it into the connector and the student.

    Defaults: weight 1.0 (``-b``), feature_weight 1.0 (the reference's resnet8x4 and wrn_40_1
    students; it multiplies the feature term by 10 for a ShuffleV1 student, a setting kdzoo
    leaves to ``feature_weight``), ``ce_weight`` 1.0. The reference trains on a batch of labelled
    plus unlabelled out-of-distribution images (cross-entropy on the labelled part only); kdzoo
    has no unlabelled split and computes both terms on the training batch, as the reference's
    ``--v2`` loop does for its labelled batch.

    Networks that pool no map into their classifier (no ``pre_pool`` in their metadata) are
    refused. Maps of other spatial sizes need no pooling: only their spatial means are compared.
    """

    paper = ("Knowledge Distillation via Softmax Regression Representation Learning, Yang, "
             "Martinez, Bulat & Tzimiropoulos, ICLR 2021")
    url = "https://github.com/jingyang2017/SRD_ossl"
    needs = FeatureRequest(pre_pool=True)

    def __init__(self, ctx: MethodContext, params: SRDParams) -> None:
        super().__init__(ctx, params)
        student, teacher = ctx.infos["student"].pre_pool, ctx.infos["teacher"].pre_pool
        assert student is not None and teacher is not None
        self.connector = TransferConv(student, teacher)

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        student, teacher = features["student"], features["teacher"]
        assert student.pre_pool is not None and teacher.pre_pool is not None
        regressed = self.connector(student.pre_pool)
        classifier = classifier_layer(step.networks["teacher"])
        logits = classifier(regressed.mean(dim=(2, 3)))
        p = self.params
        return {"srd_feature": p.weight * p.feature_weight *
                pooled_feature_mse(regressed, teacher.pre_pool),
                "srd_logits": p.weight * F.mse_loss(logits, teacher.logits)}
