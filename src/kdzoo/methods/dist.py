"""DIST: matching the inter- and intra-class relations of the predictions (Pearson correlation)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from ..functional.logit_kd import dist
from ..models.features import Features
from ._logit import LogitMethod, LogitParams
from .base import Step, non_negative, positive
from .registry import register_method


@dataclass(frozen=True)
class DISTParams(LogitParams):
    ce_weight: float = 1.0
    weight: float = 2.0   # DIST's overall weight (kd_loss_weight)
    beta: float = 1.0     # inter-class relation
    gamma: float = 1.0    # intra-class relation
    temperature: float = 4.0  # tau (dist_t4)
    standardize: bool = False  # logit standardization (LS, CVPR 2024)
    ctkd: bool = False         # CTKD's learnable temperature (AAAI 2023)

    def check(self, method: str) -> None:
        positive(method, temperature=self.temperature)
        non_negative(method, ce_weight=self.ce_weight, weight=self.weight, beta=self.beta,
                     gamma=self.gamma)


@register_method("dist")
class DIST(LogitMethod[DISTParams]):
    """DIST: "Knowledge Distillation from A Stronger Teacher", Huang, You, Wang, Qian & Xu,
    NeurIPS 2022.

    Reference loss: hunto/image_classification_sota ``lib/models/losses/dist_kd.py`` (``DIST``;
    https://github.com/hunto/image_classification_sota, the ``classification`` submodule of
    https://github.com/hunto/DIST_KD): T^2 * (beta * inter + gamma * intra), inter = 1 - the mean
    Pearson correlation of each sample's class probabilities, intra = the same over each class's
    column of the batch, probabilities softmax(z / T)
    (:func:`kdzoo.functional.logit_kd.dist`). The class's defaults are beta 1, gamma 1, tau 1
    (the ImageNet setting, ``kd: dist``); the stored version of ``dist_kd.py`` has no tau at all,
    the later one divides by tau and multiplies by tau^2 (hunto/image_classification_sota
    issue #19), which kdzoo follows (equal at tau 1).

    kdzoo's defaults are the authors' CIFAR-100 setting instead, since kdzoo's benchmarks are
    CIFAR-style: the DIST_KD README (commit 2418f18b) trains CIFAR-100 with
    ``configs/strategies/distill/dist_cifar.yaml``, which selects the temperature through the
    ``dist_t{tau}`` option of the authors' ``KDLoss`` (DIST(beta=1, gamma=1, tau)) and sets
    ``ori_loss_weight`` and ``kd_loss_weight``. That YAML could not be read for this port (it is
    not in the stored index); the values used are tau 4, CE weight 1 and DIST weight 2, i.e.
    beta = gamma = 2 at tau 4, the CIFAR-100 setting as third-party CIFAR ports carry it (e.g.
    Klayand/PCKA ``DISTLoss(beta=2, gamma=2, tem=4)``); check them against the YAML. So:
    ce_weight 1, weight 2, beta 1, gamma 1, temperature (tau) 4. The ImageNet setting is
    ``weight: 1, temperature: 1``.
    """

    paper = ("Knowledge Distillation from A Stronger Teacher, Huang, You, Wang, Qian & Xu, "
             "NeurIPS 2022")
    url = ("https://github.com/hunto/image_classification_sota/blob/main/"
           "lib/models/losses/dist_kd.py")

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        s, t = self.logit_pair(features["student"].logits, features["teacher"].logits)
        loss = dist(s, t, self.params.beta, self.params.gamma, self.temperature(step))
        return {"dist": self.params.weight * loss}
