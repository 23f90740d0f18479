"""Class activation maps (CAMs) and their transfer (CAT-KD).

"Class Attention Transfer Based Knowledge Distillation", Guo, Liu, Wang, Tan & Wen, CVPR 2023;
the authors' code is github.com/GzyAftermath/CAT-KD, ``mdistiller/distillers/CAT_KD.py``
(``CAT_loss``, ``_Normalize``, ``_mask``) with its models' ``*_test`` variants, whose classifier
is a bias-free 1x1 convolution applied before the global pool (so the CAMs are its output and
the logits their spatial mean). Pure functions, float32 or float64 in, the same dtype out.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["cat_loss", "class_activation_maps"]


def class_activation_maps(feature_map: Tensor, weight: Tensor) -> Tensor:
    """CAM_k = sum_c W_kc F_c: the classifier weight ``weight`` (K, C) applied to every position
    of the map ``feature_map`` (B, C, H, W) that the network globally pools, without the bias
    (the CAT-KD models' ``conv_test``, a bias-free 1x1 convolution); (B, K, H, W). Its spatial
    mean is the logits minus the bias."""
    return torch.einsum("bchw,kc->bkhw", feature_map, weight)


def cat_loss(student_cams: Tensor, teacher_cams: Tensor, resolution: int = 2,
             normalize: bool = True) -> Tensor:
    """The reference's ``CAT_loss``: both CAM stacks adaptive-average-pooled to ``resolution`` x
    ``resolution``, each map L2-normalised over its positions when ``normalize``
    (``F.normalize(dim=(2, 3))``, eps 1e-12), then the mean squared difference over all
    elements (``F.mse_loss``). The two stacks need the same number of maps, not the same
    spatial size."""
    size = (resolution, resolution)
    student = F.adaptive_avg_pool2d(student_cams, size)
    teacher = F.adaptive_avg_pool2d(teacher_cams, size)
    if normalize:
        student = F.normalize(student, dim=(2, 3))
        teacher = F.normalize(teacher, dim=(2, 3))
    return F.mse_loss(student, teacher)


# --------------------------------------------- the reference's options (teacher side, no grad)
def _binarize(cams: Tensor) -> Tensor:
    """``IF_BINARIZE``: 1 where a map exceeds its mean absolute value (L1 norm / (H W)), else 0."""
    height, width = cams.shape[2], cams.shape[3]
    threshold = torch.linalg.vector_norm(cams, ord=1, dim=(2, 3), keepdim=True) / (height * width)
    return (F.relu(cams - threshold) > 0).to(cams.dtype)


def _partial_mask(teacher_logits: Tensor, count: int,
                  strategy: Literal["top", "bottom"]) -> Tensor:
    """``IF_OnlyTransferPartialCAMs``'s class mask (B, K), as the reference computes it:
    "top" (``Strategy`` 0) keeps the classes whose logit exceeds the ``count``-th largest (so
    ``count`` - 1 classes without ties); "bottom" (``Strategy`` 1) keeps those whose logit is at
    most the (K - ``count``)-th largest (``count`` + 1 classes; the reference writes K - 1 = 99
    for CIFAR-100)."""
    ordered = torch.sort(teacher_logits, dim=1, descending=True)[0]
    classes = teacher_logits.shape[1]
    if strategy == "top":
        level = ordered[:, count - 1:count]
        return F.relu(teacher_logits - level) > 0
    level = ordered[:, classes - 1 - count:classes - count]
    return ~(F.relu(teacher_logits - level) > 0)


def _select_cams(teacher_cams: Tensor, student_cams: Tensor,
                 mask: Tensor) -> tuple[Tensor, Tensor]:
    """The reference's ``_mask``: the masked maps of each sample, flattened in order and viewed
    as (B, -1, H, W); both stacks unchanged when the number of kept maps is not a multiple of B
    (it checks only the total, so per-sample counts that differ but add up are mixed, as there)."""
    batch = teacher_cams.shape[0]
    kept = mask.reshape(batch, -1, 1, 1)
    if int(kept.sum()) % batch != 0:
        return teacher_cams, student_cams
    teacher = torch.masked_select(teacher_cams, kept.expand_as(teacher_cams))
    student = torch.masked_select(student_cams, kept.expand_as(student_cams))
    return (teacher.view(batch, -1, *teacher_cams.shape[2:]),
            student.view(batch, -1, *student_cams.shape[2:]))
