"""Losses on sequences of feature maps and on channel relations: ReviewKD's hierarchical context
loss, ICKD's inter-channel correlation and KDSVD's singular-vector relations.

Each function computes its loss exactly as the authors' (or mdistiller's) code does, number for
number; the methods in :mod:`kdzoo.methods` add the connectors, pick the stages and apply the
weights. Inputs are (B, C, H, W) tensors; nothing is modified in place and the result has the
inputs' dtype (half precision is computed in float32 where noted).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["hierarchical_context_loss", "inter_channel_correlation", "kdsvd"]

#: The pooled sizes of the hierarchical context loss, and their weights halve from 1/2 on.
HCL_LEVELS = (4, 2, 1)
#: Denominator of KDSVD's radial basis functions: exp(-d^2 / 8).
KDSVD_RBF_SCALE = 8.0
#: Which matrix of each map KDSVD decomposes: mdistiller's (C*H) x W ``view(B, C*H, W)``, or
#: RepDistiller's (and the TensorFlow original's) (H*W) x C matrix.
KDSVDVariant = Literal["mdistiller", "repdistiller"]


def hierarchical_context_loss(student_features: Sequence[Tensor],
                              teacher_features: Sequence[Tensor]) -> Tensor:
    """ReviewKD's hierarchical context loss (HCL): "Distilling Knowledge via Knowledge Review",
    Chen, Liu, Zhao & Jia, CVPR 2021; ``hcl`` in dvlab-research/ReviewKD
    ``CIFAR-100/model/reviewkd.py`` and ``hcl_loss`` in megvii-research/mdistiller
    ``mdistiller/distillers/ReviewKD.py``.

    For each level (a pair of (B, C, H, W) maps of one shape), the mean squared error of the maps
    plus, for every l in (4, 2, 1) smaller than H, the mean squared error of both maps
    adaptive-average-pooled to l x l with weights 1/2, 1/4, 1/8 (halving only over the sizes
    used), all divided by the sum of the weights used (1 for the full maps); the levels are
    summed (not averaged). The sizes are compared with the maps' height, as the reference does.
    """
    if len(student_features) != len(teacher_features) or not student_features:
        raise ValueError(f"hierarchical_context_loss: {len(student_features)} student and "
                         f"{len(teacher_features)} teacher levels; give one map of each per "
                         "level, at least one level")
    total: Tensor | None = None
    for fs, ft in zip(student_features, teacher_features):
        if fs.shape != ft.shape:
            raise ValueError(f"hierarchical_context_loss: student map {tuple(fs.shape)} and "
                             f"teacher map {tuple(ft.shape)} must have the same shape")
        height = fs.shape[2]
        loss = F.mse_loss(fs, ft)
        weight, weights = 1.0, 1.0
        for size in HCL_LEVELS:
            if size >= height:
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(fs, size),
                                              F.adaptive_avg_pool2d(ft, size))
            weights += weight
        level = loss / weights
        total = level if total is None else total + level
    assert total is not None
    return total


def inter_channel_correlation(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """ICKD's inter-channel correlation loss: "Exploring Inter-Channel Correlation for
    Diversity-Preserved Knowledge Distillation", Liu, Huang, Lin, Xie, Wang, Chang & Liang,
    ICCV 2021;
    ``ICKDLoss.batch_loss`` in ADLab-AutoDrive/ICKD ``Cifar100/distiller_zoo/ICKD.py``.

    Per sample, the C x C Gram matrix G = F F^T of the (C, H*W) map, each row L2-normalised
    (``F.normalize``, eps 1e-12); L = sum_{b,i,j} (G^s_bij - G^t_bij)^2 / (C * B). Both maps need
    the same batch size and channel count (the method's embedding maps the student's to the
    teacher's); their spatial sizes may differ, since G sums over positions.
    """
    if student_feature.shape[:2] != teacher_feature.shape[:2]:
        raise ValueError(f"inter_channel_correlation: student map {tuple(student_feature.shape)} "
                         f"and teacher map {tuple(teacher_feature.shape)} need the same batch "
                         "size and channel count (embed the student's map to the teacher's "
                         "width)")
    batch, channels = student_feature.shape[:2]

    def correlation(feature: Tensor) -> Tensor:
        flat = feature.reshape(batch, channels, -1)
        return F.normalize(torch.bmm(flat, flat.transpose(1, 2)), dim=2)

    diff = correlation(student_feature) - correlation(teacher_feature)
    return diff.pow(2).sum() / (channels * batch)


def _finite(x: Tensor) -> Tensor:
    """Non-finite values replaced by 0 (the reference's ``removenan``)."""
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def _right_singular_vectors(feature: Tensor, count: int,
                            variant: KDSVDVariant = "mdistiller") -> tuple[Tensor, Tensor]:
    """The first ``count`` right singular vectors (B, N, count), each L2-normalised, and the
    first ``count`` singular values (B, count), L2-normalised as one vector, of each sample's
    map viewed as a matrix (the left singular vectors are never used):

    * ``"mdistiller"``: the (C*H) x W view, mdistiller's ``svd(feat, n)``; N = W;
    * ``"repdistiller"``: the (H*W) x C matrix, RepDistiller's ``KDSVD.svd`` (``view(-1, C,
      H*H).transpose(-2, -1)``, row h*W + w, column c); N = C.
    """
    batch, channels, height, width = feature.shape
    if variant == "mdistiller":
        matrix = feature.reshape(batch, channels * height, width)
    elif variant == "repdistiller":
        matrix = feature.reshape(batch, channels, height * width).transpose(1, 2)
    else:
        raise ValueError(f"kdsvd: unknown variant {variant!r}; choose mdistiller or repdistiller")
    if matrix.dtype in (torch.float16, torch.bfloat16):
        matrix = matrix.float()  # the reference computes the SVD in float32 (``.float()``)
    _, values, vh = torch.linalg.svd(matrix, full_matrices=False)
    vectors = _finite(vh.transpose(-2, -1))
    values = _finite(values)
    return F.normalize(vectors[:, :, :count], dim=1), F.normalize(values[:, :count], dim=1)


def _align_to_teacher(student: Tensor, teacher: Tensor) -> Tensor:
    """mdistiller's (and RepDistiller's) ``align_rsv``: for each teacher vector, the student
    vector of largest absolute cosine, with the cosine's sign ((B, N, k) from (B, N, k + 3))."""
    cosine = torch.matmul(student.transpose(-2, -1), teacher)
    best = cosine.abs().max(dim=1, keepdim=True).values
    mask = torch.where(best == cosine.abs(), torch.sign(cosine), torch.zeros_like(cosine))
    return torch.matmul(student, mask)


def kdsvd(student_features: Sequence[Tensor], teacher_features: Sequence[Tensor],
          k: int = 1, variant: KDSVDVariant = "mdistiller") -> Tensor:
    """KDSVD: "Self-supervised Knowledge Distillation Using Singular Value Decomposition", Lee,
    Kim & Song, ECCV 2018, summed over the pairs of consecutive stages, as two ports of the
    authors' TensorFlow code (sseung0703/SSKD_SVD) compute it (``variant``):

    * ``"mdistiller"``: megvii-research/mdistiller@a08d46f ``mdistiller/distillers/KDSVD.py``
      (``kdsvd_loss``): each map viewed per sample as a (C*H) x W matrix (``view(B, C*H, W)``
      of the NCHW map), so the singular vectors live on the width W;
    * ``"repdistiller"``: HobbitLong/RepDistiller@b84f547 ``distiller_zoo/KDSVD.py``: the
      (H*W) x C matrix (``feat.view(-1, C, H*H).transpose(-2, -1)``, as the TensorFlow
      original reshapes its NHWC map), so the singular vectors live on the channels C.

    Per stage, each matrix is decomposed; the teacher keeps its first ``k`` right singular
    vectors V_t, the student its first k + 3, each L2-normalised, and every teacher vector picks
    the student vector of largest absolute cosine, with its sign. Both are scaled by the
    teacher's first k singular values, L2-normalised as a vector (so 1 for k = 1). For
    consecutive stages i-1, i, the radial basis function R[b, p, q, j] = exp(-(V_i[b, p, j] -
    V_{i-1}[b, q, j])^2 / 8) is built for both networks and the loss adds sum (R_s - R_t)^2
    (non-finite terms 0) / B. The two references differ only in the matrix (RepDistiller
    returns the per-pair terms, which its ``helper/loops.py`` sums).

    The teacher's side is a constant (the references' ``.detach()``): no gradient reaches
    ``teacher_features``. Each pair must have the same width W ("mdistiller"; pool with
    ``match_spatial_size`` where strides differ) or the same channel count C ("repdistiller";
    the spatial sizes may then differ); the other dimension may differ. RepDistiller's
    ``view(-1, C, H*H)`` assumes square maps; H*W is used here, the same for square maps.
    Half-precision maps are decomposed in float32 as in mdistiller; float64 stays float64
    (mdistiller's ``.float()`` would cast it down). Like the references, the gradient through
    the SVD is finite only while the student's singular values are distinct.
    """
    if k < 1:
        raise ValueError(f"kdsvd: k must be at least 1, got {k}")
    if variant not in ("mdistiller", "repdistiller"):
        raise ValueError(f"kdsvd: unknown variant {variant!r}; choose mdistiller or repdistiller")
    if len(student_features) != len(teacher_features) or len(student_features) < 2:
        raise ValueError(f"kdsvd: {len(student_features)} student and {len(teacher_features)} "
                         "teacher maps; it relates consecutive stages, so give at least two "
                         "pairs")
    batch = student_features[0].shape[0]
    previous: tuple[Tensor, Tensor] | None = None
    total: Tensor | None = None
    for fs, ft in zip(student_features, teacher_features):
        shared, what = (3, "width") if variant == "mdistiller" else (1, "channel count")
        if fs.shape[0] != ft.shape[0] or fs.shape[shared] != ft.shape[shared]:
            raise ValueError(f"kdsvd ({variant}): student map {tuple(fs.shape)} and teacher map "
                             f"{tuple(ft.shape)} need the same batch size and {what}")
        v_t, s_t = _right_singular_vectors(ft.detach(), k, variant)
        v_s, _ = _right_singular_vectors(fs, k + 3, variant)
        v_s = _align_to_teacher(v_s, v_t)
        scale = s_t.unsqueeze(1)
        v_t, v_s = v_t * scale, v_s * scale
        if previous is not None:
            prev_s, prev_t = previous
            rbf_s = torch.exp(-(v_s.unsqueeze(2) - prev_s.unsqueeze(1)).pow(2) / KDSVD_RBF_SCALE)
            rbf_t = torch.exp(-(v_t.unsqueeze(2) - prev_t.unsqueeze(1)).pow(2) / KDSVD_RBF_SCALE)
            term = _finite((rbf_s - rbf_t).pow(2)).sum() / batch
            total = term if total is None else total + term
        previous = (v_s, v_t)
    assert total is not None
    return total.to(student_features[0].dtype)
