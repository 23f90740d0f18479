"""Losses on feature maps: attention transfer, hints, neuron selectivity, FSP matrices,
activation boundaries and similarity preservation.

Each function computes the loss of ONE pair of maps (one stage) exactly as the reference
Knowledge-Distillation-Zoo does (AberHu/Knowledge-Distillation-Zoo@65470c8: kd_losses/); the
methods in :mod:`kdzoo.methods` average the stages and apply the weight. Inputs are (B, C, H, W)
tensors; nothing is modified in place and the result has the inputs' dtype.

Functions that compare student and teacher maps position by position (``attention_transfer``,
``neuron_selectivity_transfer``, ``hint``, ``activation_boundary``) need equal spatial sizes;
:func:`match_spatial_size` average-pools the larger map down when networks' strides differ.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "activation_boundary",
    "attention_map",
    "attention_transfer",
    "fsp",
    "fsp_matrix",
    "hint",
    "match_spatial_size",
    "neuron_selectivity_transfer",
    "similarity_preserving",
]


def _check_same_shape(name: str, student: Tensor, teacher: Tensor) -> None:
    if student.shape != teacher.shape:
        raise ValueError(
            f"{name}: student map {tuple(student.shape)} and teacher map {tuple(teacher.shape)} "
            "must have the same shape (add a connector for other widths, or pool with "
            "match_spatial_size for other sizes)"
        )


def match_spatial_size(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """``(a, b)`` with the spatially larger map adaptive-average-pooled to the other's (H, W),
    as RepDistiller does for maps of different resolutions; equal sizes pass through."""
    size_a, size_b = tuple(a.shape[2:]), tuple(b.shape[2:])
    if size_a == size_b:
        return a, b
    if size_a[0] * size_a[1] > size_b[0] * size_b[1]:
        return F.adaptive_avg_pool2d(a, size_b), b
    return a, F.adaptive_avg_pool2d(b, size_a)


def attention_map(feat: Tensor, p: float = 2.0, eps: float = 1e-6) -> Tensor:
    """Spatial attention map of Zagoruyko & Komodakis (ICLR 2017), reference form:
    Q = sum_c |x_c|^p, shape (B, 1, H, W), divided by (||Q||_2 + eps) with the norm taken over
    (H, W) per sample."""
    q = feat.abs().pow(p).sum(dim=1, keepdim=True)
    norm = torch.linalg.vector_norm(q, ord=2, dim=(2, 3), keepdim=True)
    return q / (norm + eps)


def attention_transfer(student_feat: Tensor, teacher_feat: Tensor, p: float = 2.0) -> Tensor:
    """Attention transfer ("Paying More Attention to Attention: Improving the Performance of
    Convolutional Neural Networks via Attention Transfer", Zagoruyko & Komodakis, ICLR 2017).

    L = mean_{b,h,w} (Q̂_s - Q̂_t)^2 with Q̂ = :func:`attention_map` (eps 1e-6), i.e.
    ``F.mse_loss`` over B*H*W as the reference zoo's ``AT(p)``. The paper instead takes the
    p-norm of the difference of the vectorised, L2-normalised maps; the channel counts of the two
    maps may differ (the map sums over channels), their spatial sizes may not.
    """
    return F.mse_loss(attention_map(student_feat, p), attention_map(teacher_feat, p))


def hint(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """FitNets hint loss ("FitNets: Hints for Thin Deep Nets", Romero et al., ICLR 2015):
    mean over all elements of (s - t)^2 (``F.mse_loss``; the paper has 1/2 * sum). Shapes must
    agree: a student of another width goes through a regressor first."""
    _check_same_shape("hint", student_feat, teacher_feat)
    return F.mse_loss(student_feat, teacher_feat)


def _unit_channels(feat: Tensor) -> Tensor:
    """(B, C, H*W) with every channel's spatial map L2-normalised (``F.normalize``, eps 1e-12)."""
    return F.normalize(feat.flatten(2), p=2.0, dim=2)


def _mean_poly_kernel(a: Tensor, b: Tensor) -> Tensor:
    """mean_{b,i,j} <a_i, b_j>^2: the polynomial kernel with d=2, c=0 over all channel pairs."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()


def neuron_selectivity_transfer(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """Neuron selectivity transfer ("Like What You Like: Knowledge Distill via Neuron Selectivity
    Transfer", Huang & Wang, arXiv 2017): squared MMD between the student's and the teacher's
    channels, each channel being its L2-normalised spatial map, with k(a, b) = (a^T b)^2.

    L = mean_{b,i,j} k(t_i, t_j) + mean_{b,i,j} k(s_i, s_j) - 2 mean_{b,i,j} k(s_i, t_j), each mean
    over the batch and all channel pairs, as the reference zoo's ``NST`` (no 1/2 factor; the paper
    writes lambda/2 * MMD^2). The student and teacher channel counts may differ -- MMD compares
    two samples of any sizes -- but the spatial sizes must agree.
    """
    s, t = _unit_channels(student_feat), _unit_channels(teacher_feat)
    return _mean_poly_kernel(t, t) + _mean_poly_kernel(s, s) - 2 * _mean_poly_kernel(s, t)


def fsp_matrix(first: Tensor, second: Tensor) -> Tensor:
    """The "flow of solution procedure" matrix of Yim et al. (CVPR 2017):
    G = a_flat b_flat^T / (H*W), shape (B, C_first, C_second). The spatially larger map is first
    adaptive-average-pooled to the other's size (the reference pools ``first`` when it is larger;
    in a CIFAR ResNet the second map is never larger)."""
    first, second = match_spatial_size(first, second)
    a, b = first.flatten(2), second.flatten(2)
    return torch.bmm(a, b.transpose(1, 2)) / a.shape[2]


def fsp(student_first: Tensor, student_second: Tensor, teacher_first: Tensor,
        teacher_second: Tensor) -> Tensor:
    """FSP loss ("A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and
    Transfer Learning", Yim, Joo, Bae & Kim, CVPR 2017) for one pair of layers:
    mean over B*C_first*C_second of (G_s - G_t)^2, G = :func:`fsp_matrix` (``F.mse_loss``, as the
    reference zoo; the paper sums the squared entries and averages over samples)."""
    g_student = fsp_matrix(student_first, student_second)
    g_teacher = fsp_matrix(teacher_first, teacher_second)
    _check_same_shape("fsp (FSP matrices)", g_student, g_teacher)
    return F.mse_loss(g_student, g_teacher)


def activation_boundary(student_preact: Tensor, teacher_preact: Tensor,
                        margin: float = 2.0) -> Tensor:
    """Activation-boundary loss ("Knowledge Transfer via Distillation of Activation Boundaries
    Formed by Hidden Neurons", Heo, Lee, Yun & Choi, AAAI 2019) on pre-ReLU maps:

    L = mean[(s + m)^2 * 1(s > -m and t <= 0) + (s - m)^2 * 1(s <= m and t > 0)]

    over all elements, as the reference zoo's ``AB(margin)`` (m = 2). The original code sums and
    divides by the batch size, 1000/3 and per-layer powers of two; no gradient flows through the
    indicators, so the teacher gets none.
    """
    _check_same_shape("activation_boundary", student_preact, teacher_preact)
    s, t = student_preact, teacher_preact
    teacher_off = (t <= 0).to(s.dtype)
    teacher_on = (t > 0).to(s.dtype)
    push_down = (s > -margin).to(s.dtype) * teacher_off
    push_up = (s <= margin).to(s.dtype) * teacher_on
    return ((s + margin).pow(2) * push_down + (s - margin).pow(2) * push_up).mean()


def similarity_preserving(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """Similarity-preserving loss ("Similarity-Preserving Knowledge Distillation", Tung & Mori,
    ICCV 2019): G = x_flat x_flat^T (B x B), each row L2-normalised (``F.normalize``, eps 1e-12),
    L = mean over B^2 of (Ĝ_s - Ĝ_t)^2. Maps of any channel counts and sizes can be compared."""
    g_student = _row_normalised_gram(student_feat)
    g_teacher = _row_normalised_gram(teacher_feat)
    return F.mse_loss(g_student, g_teacher)


def _row_normalised_gram(feat: Tensor) -> Tensor:
    flat = feat.flatten(1)
    return F.normalize(flat @ flat.t(), p=2.0, dim=1)
