"""MLKD: instance-, class- and batch-level logit distillation over several temperatures."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..functional.logits import soft_target
from ..functional.multilevel import batch_correlation, class_correlation
from ..models.features import Features
from ._logit import LogitMethod, LogitParams
from .base import Step
from .registry import register_method

#: The temperatures after the base one, in the reference's order: [T, 3, 5, 2, 6].
EXTRA_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)


def below_median(values: Tensor) -> Tensor:
    """``values <= percentile(values, 50)`` with linear interpolation between the two middle
    values (``np.percentile``'s default), as a bool tensor; computed on the tensor's device."""
    flat = values.detach().flatten()
    threshold = torch.quantile(flat, 0.5, interpolation="linear")
    return values.detach() <= threshold


def confidence_masks(teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
    """MLKD's masks from the teacher's weak-view prediction p = softmax(z_t) (no temperature):
    the samples whose confidence max_k p_k is at most the batch median (B,), and the classes
    whose summed probability sum_b p_b,k is at most the median over classes (C,)."""
    prediction = F.softmax(teacher_logits.detach(), dim=1)
    confidence = prediction.max(dim=1).values
    class_confidence = prediction.sum(dim=0)
    return below_median(confidence), below_median(class_confidence)


@dataclass(frozen=True)
class MLKDParams(LogitParams):
    ce_weight: float = 0.1     # cfg.KD.LOSS.CE_WEIGHT
    weight: float = 0.9        # cfg.KD.LOSS.KD_WEIGHT
    temperature: float = 4.0   # cfg.KD.TEMPERATURE (the first of T, 3, 5, 2, 6)
    protocol: Literal["paper", "standard"] = "paper"
    standardize: bool = False  # logit standardization (LS, CVPR 2024), on the KD terms
    ctkd: bool = False         # CTKD's learnable temperature (AAAI 2023) for T

    def check(self, method: str) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"method {method}: temperature must be positive, got "
                              f"{self.temperature}")


@register_method("mlkd")
class MultiLevelLogitDistillation(LogitMethod[MLKDParams]):
    """Multi-level logit distillation: "Multi-Level Logit Distillation", Jin, Wang & Lin,
    CVPR 2023; reference github.com/Jin-Ying/Multi-Level-Logit-Distillation
    at commit 5ee473f (``mdistiller/distillers/KD_ours.py``, ``mdistiller/engine/cfg.py``,
    ``configs/cifar100/ours/*.yaml``; the strong view: ``mdistiller/dataset/cifar100.py``
    ``get_cifar100_train_transform_strong``).

    The reference's loss, for the weak view w (the run's augmentation) and the strong view s,
    with W = kd weight, the temperatures (T, 3, 5, 2, 6), KD_T(a, b) = T^2 KL(softmax(b/T) ||
    softmax(a/T)) ('batchmean', :func:`~kdzoo.functional.soft_target`), and the masks of
    :func:`confidence_masks` from the teacher's untempered weak-view prediction:

    * ``ce``: ce_weight * (CE(z_s^w) + CE(z_s^s));
    * ``kd``: sum_T W * mean_b(KD_T(z_s^w, z_t^w) * m_b) + W * [KD_T(z_s^s, z_t^s) for T in
      (T, 3, 5)] + W * [KD_T(z_s^w, z_t^w) for T in (2, 6)] -- the reference's ``reduce=False``
      is commented out, so KD_T is already the batch mean and ``* mask`` then ``.mean()`` scales
      it by the fraction of samples at or below the median confidence; the last two strong-view
      terms read the *weak* logits, as written there;
    * ``cc``: sum_T W * mean_c(:func:`~kdzoo.functional.multilevel.class_correlation` * m_c),
      weak view only (the class mask, likewise a scale factor);
    * ``bc``: sum_T W * mean_b(:func:`~kdzoo.functional.multilevel.batch_correlation` * m_b),
      weak view only (the reference also computes ``loss_cc_strong`` and ``loss_bc_strong`` but
      does not return them).

    Defaults: T 4, ce_weight 0.1, weight 0.9 (``cfg.KD``, which ``configs/cifar100/ours/*.yaml``
    do not override), and the authors' two views (``protocol`` "paper"). The configs' SGD
    settings are the run's, not the method's, and are kdzoo's recipes under the repdistiller and
    mdistiller presets (``configs/recipes/schedules.yaml``; at the authors' commit 5ee473f,
    2024-09-23): batch 64, weight decay 5e-4, momentum 0.9, the lr divided by 10 after epochs
    150, 180 and 210 whatever the length; 240 epochs at lr 0.025 for the same-family pairs
    (resnet56/110 -> resnet20/32, resnet32x4 -> resnet8x4, vgg13 -> vgg8, wrn_40_2 ->
    wrn_16_2/wrn_40_1), 480 epochs at lr 0.01 for wrn_40_2 -> ShuffleV1 and vgg13/ResNet50 ->
    MobileNetV2, 960 epochs at lr 0.01 for resnet32x4 -> ShuffleV1/V2. (The first commit
    6327e73 trained every pair 480 epochs, at lr 0.0025 for the three 480-epoch cross-family
    pairs; 77b91ec raised those to 0.01 and the ShuffleNet pairs to 960 epochs; 5ee473f cut the
    same-family pairs to 240.) Pairs MLKD has no config for get the LS authors' MLKD config
    (sunshangquan/logit-standardization-KD ``configs/cifar100/mlkd/``), with which they ran the
    MLKD cells of their README (480 epochs). With ``standardize`` the schedules are LS's configs
    (480 epochs, 960 for the ShuffleNet pairs, lr 0.01 for vgg13 -> vgg8).

    ``protocol`` says which views train (recorded with the hyper-parameters in config.yaml and
    summary.json, and readable in the log from the term names):

    * ``"paper"`` (default): as the authors train (``tools/train_ours.py`` line 40 always loads
      ``get_dataset_strong``), with an extra strong view of each image (``views`` =
      ("strong",); the loader draws the crop and flip anew, then MLKD's RandAugment(2, 10) with
      Cutout, :mod:`kdzoo.data.randaugment`). Both networks run on it through ``Step.run``: the
      student in a second pass of the step module's forward (compiled with ``--compile``), in
      training mode, so its BatchNorm statistics see both views, weak first, as in the
      reference; the teacher through its inference path. Terms: ``ce``, ``strong_ce``,
      ``kd_weak`` (the masked weak sum), ``kd_strong`` (T, 3, 5 on the strong view, 2 and 6 on
      the weak), ``cc``, ``bc``.
    * ``"standard"``: the run's one augmented view only (not MLKD as published; an option for
      comparisons under one augmentation), i.e. the reference's loss with the strong view equal
      to the weak one. The terms then read: ``ce`` + ``second_ce`` = 2 x ce_weight x
      CE(z_s^w); ``kd_masked`` = W * frac_b * sum_T KD_T(z_s^w, z_t^w) and ``kd_unmasked`` = W *
      sum_T KD_T(z_s^w, z_t^w) (all five temperatures); ``cc`` and ``bc`` as above.

    Options (:mod:`kdzoo.methods._logit`): ``standardize`` z-scores the logits of the KD terms
    only, and keeps the masks and the class/batch terms on the raw logits, as LS's MLKD
    (sunshangquan/logit-standardization-KD ``mdistiller/distillers/MLKD.py``); ``ctkd`` learns
    the base temperature T (the first of the five), the others stay fixed.

    The median is ``torch.quantile(..., 0.5)`` on the device (``np.percentile``'s linear
    interpolation, without the reference's host round trip).
    """

    paper = "Multi-Level Logit Distillation, Jin, Wang & Lin, CVPR 2023"
    url = "https://github.com/Jin-Ying/Multi-Level-Logit-Distillation"

    @property
    def views(self) -> tuple[str, ...]:
        return ("strong",) if self.params.protocol == "paper" else ()

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        p = self.params
        weak_s, weak_t = features["student"].logits, features["teacher"].logits
        paper = p.protocol == "paper"
        if paper:
            strong_images = step.batch.views["strong"]
            strong_s = step.run("student", strong_images).logits
            with torch.no_grad():  # a target: no autograd through the teacher
                strong_t = step.run("teacher", strong_images).logits
        else:
            strong_s, strong_t = weak_s, weak_t
        weight = p.weight
        temperatures = (self.temperature(step), *EXTRA_TEMPERATURES)
        mask, class_mask = confidence_masks(weak_t)
        kd_weak_s, kd_weak_t = self.logit_pair(weak_s, weak_t)
        kd_strong_s, kd_strong_t = self.logit_pair(strong_s, strong_t)

        def weighted_sum(values: list[Tensor]) -> Tensor:
            total = weight * values[0]
            for value in values[1:]:
                total = total + weight * value
            return total

        kd_masked = weighted_sum([(soft_target(kd_weak_s, kd_weak_t, T) * mask).mean()
                                  for T in temperatures])
        kd_unmasked = weighted_sum(
            [soft_target(kd_strong_s, kd_strong_t, T) for T in temperatures[:3]]
            + [soft_target(kd_weak_s, kd_weak_t, T) for T in temperatures[3:]])
        cc = weighted_sum([(class_correlation(weak_s, weak_t, T) * class_mask).mean()
                           for T in temperatures])
        bc = weighted_sum([(batch_correlation(weak_s, weak_t, T) * mask).mean()
                           for T in temperatures])
        # The reference's CE on the strong view, weighted like the loop's "ce" (the stage's
        # ce_weight, which is this method's ce_weight).
        second_ce = step.stage.ce_weight * F.cross_entropy(strong_s, step.batch.labels)
        if paper:
            return {"strong_ce": second_ce, "kd_weak": kd_masked, "kd_strong": kd_unmasked,
                    "cc": cc, "bc": bc}
        return {"second_ce": second_ce, "kd_masked": kd_masked, "kd_unmasked": kd_unmasked,
                "cc": cc, "bc": bc}
