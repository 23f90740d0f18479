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

    Reference loss: hunto/image_classification_sota at commit 6f7a70a,
    ``lib/models/losses/dist_kd.py`` (``DIST``; https://github.com/hunto/image_classification_sota,
    the ``classification`` submodule of https://github.com/hunto/DIST_KD): tau^2 * (beta * inter +
    gamma * intra), inter = 1 - the mean Pearson correlation (eps 1e-8) of each sample's class
    probabilities, intra = the same over each class's column of the batch, probabilities
    softmax(z / tau) (:func:`kdzoo.functional.logit_kd.dist`). The class's defaults are beta 1,
    gamma 1, tau 1 (the ImageNet setting, ``kd: dist``).

    kdzoo's defaults are the authors' CIFAR-100 setting, since kdzoo's benchmarks are
    CIFAR-style: the DIST_KD README (commit 2418f18, lines 82-90) trains CIFAR-100 with
    ``configs/strategies/distill/dist_cifar.yaml`` of image_classification_sota (at 6f7a70a:
    ``ori_loss_weight: 1.``, ``kd_loss_weight: 2.``, ``kd: dist_t4``, which
    ``lib/models/losses/kd_loss.py`` lines 69-71 turn into DIST(beta=1, gamma=1, tau=4)). So:
    ce_weight 1, weight 2, beta 1, gamma 1, temperature (tau) 4. The same YAML's optimiser is
    the repdistiller preset's: SGD without Nesterov (``sgd_no_nesterov``), momentum 0.9, batch
    64, lr 0.05 (0.01 for MobileNetV2/ShuffleNet students, README line 88), weight decay 5e-4,
    240 epochs, 120 warm-up epochs at the base lr (``warmup_lr`` = ``lr``) and then a step of
    x0.1 every 30 epochs (``lib/utils/scheduler.py``: a StepLR after the warm-up), i.e. drops
    after epochs 150, 180 and 210; random crop with zero padding 4 and flip
    (``lib/dataset/transform.py``), RepDistiller's normalisation constants. The ImageNet setting
    is ``weight: 1, temperature: 1``.
    """

    paper = ("Knowledge Distillation from A Stronger Teacher, Huang, You, Wang, Qian & Xu, "
             "NeurIPS 2022")
    url = ("https://github.com/hunto/image_classification_sota/blob/main/"
           "lib/models/losses/dist_kd.py")

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        s, t = self.logit_pair(features["student"].logits, features["teacher"].logits)
        loss = dist(s, t, self.params.beta, self.params.gamma, self.temperature(step))
        return {"dist": self.params.weight * loss}
