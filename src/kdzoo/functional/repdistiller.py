"""RepDistiller's forms of the feature-map losses where they differ from the reference zoo's
(:mod:`kdzoo.functional.maps`, :mod:`kdzoo.functional.regression`,
:mod:`kdzoo.functional.relations`): the methods' ``variant="repdistiller"`` uses them.

Tian, Krishnan & Isola's CRD code base, HobbitLong/RepDistiller@b84f547:
``distiller_zoo/AT.py`` (``Attention.at_loss``, ``Attention.at``), the spatial matching that
``AT.py``, ``NST.py``, ``VID.py``, ``FT.py`` and ``FSP.py`` share, ``distiller_zoo/CC.py``
(``Correlation``), ``distiller_zoo/AB.py`` (``ABLoss``), ``distiller_zoo/FSP.py`` (``FSP``) and
``distiller_zoo/FT.py`` (``FactorTransfer``). Pure functions, float32 or float64 in, the same
dtype out.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

__all__ = ["repdistiller_activation_boundary", "repdistiller_attention_map",
           "repdistiller_attention_transfer", "repdistiller_correlation", "repdistiller_factor",
           "repdistiller_factor_transfer", "repdistiller_fsp", "repdistiller_fsp_matrix",
           "repdistiller_match_size"]


def repdistiller_match_size(student_feat: Tensor, teacher_feat: Tensor) -> tuple[Tensor, Tensor]:
    """RepDistiller's matching of maps of other resolutions (``AT.at_loss``, ``NST.nst_loss``):
    compared by height only, the taller map is adaptive-average-pooled to (h, h), h the other's
    height; maps of one height pass through (for square maps this is
    :func:`kdzoo.functional.match_spatial_size`)."""
    s_height, t_height = student_feat.shape[2], teacher_feat.shape[2]
    if s_height > t_height:
        return F.adaptive_avg_pool2d(student_feat, (t_height, t_height)), teacher_feat
    if s_height < t_height:
        return student_feat, F.adaptive_avg_pool2d(teacher_feat, (s_height, s_height))
    return student_feat, teacher_feat


def repdistiller_attention_map(feat: Tensor, p: float = 2.0) -> Tensor:
    """RepDistiller's ``Attention.at``: the channel MEAN of x^p (not of |x|^p; the stages are
    post-ReLU), flattened to (B, H*W) and L2-normalised per sample with ``F.normalize``
    (x / max(||x||_2, 1e-12)); the reference zoo sums |x|^p over channels and divides by
    (||Q||_2 + 1e-6)."""
    return F.normalize(feat.pow(p).mean(dim=1).reshape(feat.shape[0], -1), p=2.0, dim=1)


def repdistiller_attention_transfer(student_feat: Tensor, teacher_feat: Tensor,
                                    p: float = 2.0) -> Tensor:
    """RepDistiller's ``Attention.at_loss`` for one pair of maps: after
    :func:`repdistiller_match_size`, mean over B*H*W of
    (at(f_s) - at(f_t))^2 with at = :func:`repdistiller_attention_map`. The channel counts may
    differ."""
    student_feat, teacher_feat = repdistiller_match_size(student_feat, teacher_feat)
    diff = repdistiller_attention_map(student_feat, p) - repdistiller_attention_map(teacher_feat, p)
    return diff.pow(2).mean()


def repdistiller_correlation(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """RepDistiller's ``Correlation`` (``distiller_zoo/CC.py``, the CC code Peng et al. gave
    RepDistiller's author): with d = |e_s - e_t| per sample (B x D), the mean over the B - 1
    consecutive pairs of samples (i, i+1) of sum_k d_ik d_(i+1)k. The embeddings are the
    method's linear embeddings of the pooled features. A batch of one sample has no pair: 0
    (RepDistiller's mean of nothing is NaN)."""
    if student_emb.shape != teacher_emb.shape:
        raise ValueError(f"repdistiller_correlation: embeddings of shapes "
                         f"{tuple(student_emb.shape)} and {tuple(teacher_emb.shape)}")
    delta = (student_emb - teacher_emb).abs().flatten(1)
    if delta.shape[0] < 2:
        return delta.sum() * 0.0
    return (delta[:-1] * delta[1:]).sum(dim=1).mean()


def repdistiller_activation_boundary(student_preacts: Sequence[Tensor],
                                     teacher_preacts: Sequence[Tensor],
                                     margin: float = 1.0) -> Tensor:
    """RepDistiller's ``ABLoss(feat_num, margin)`` summed over its stages, as its initialisation
    stage uses it (``helper/pretrain.py``: ``loss = sum(loss_group)``): for stage i of n
    (0-based, in network order) the weight 2^(i - n + 1) times

    sum over all elements of (s + m)^2 1(s > -m, t <= 0) + (s - m)^2 1(s <= m, t > 0),

    divided by the batch size and by 1000 / 3 (the ``/ bsz``, ``/ 1000 * 3`` of its code), with
    the margin m = 1 of ``ABLoss``'s default. The reference zoo's form
    (:func:`kdzoo.functional.activation_boundary`) is the plain mean with m = 2. The student's
    maps come through RepDistiller's ``Connector`` first (the method's); pairs must have equal
    shapes."""
    if len(student_preacts) != len(teacher_preacts) or not student_preacts:
        raise ValueError("repdistiller_activation_boundary: one teacher map per student map, "
                         "at least one")
    count = len(student_preacts)
    total = student_preacts[0].new_zeros(())
    for i, (s, t) in enumerate(zip(student_preacts, teacher_preacts)):
        if s.shape != t.shape:
            raise ValueError(f"repdistiller_activation_boundary: stage {i} has shapes "
                             f"{tuple(s.shape)} and {tuple(t.shape)}")
        push_down = ((s > -margin) & (t <= 0)).to(s.dtype)
        push_up = ((s <= margin) & (t > 0)).to(s.dtype)
        summed = ((s + margin).pow(2) * push_down + (s - margin).pow(2) * push_up).sum()
        total = total + 2.0 ** (i - count + 1) * summed / s.shape[0] / 1000 * 3
    return total


def repdistiller_fsp_matrix(bottom: Tensor, top: Tensor) -> Tensor:
    """RepDistiller's ``FSP.compute_fsp`` for one pair of consecutive maps: after
    :func:`repdistiller_match_size` (the taller map pooled to the other's height), the
    (B, C_top, C_bottom) matrix of mean over H*W of top_c * bottom_d (the transpose of
    :func:`kdzoo.functional.fsp_matrix`)."""
    bottom, top = repdistiller_match_size(bottom, top)
    batch = bottom.shape[0]
    flat_bottom = bottom.reshape(batch, bottom.shape[1], -1)
    flat_top = top.reshape(batch, top.shape[1], -1)
    return flat_top.bmm(flat_bottom.transpose(1, 2)) / flat_bottom.shape[2]


def repdistiller_fsp(student_maps: Sequence[Tensor], teacher_maps: Sequence[Tensor]) -> Tensor:
    """RepDistiller's FSP loss as its initialisation stage uses it (``FSP.forward``,
    ``helper/pretrain.py``: ``loss = sum(loss_group)``): over the consecutive pairs of the maps
    [stem, stage 1, ..., stage K], the mean squared difference of the student's and the
    teacher's :func:`repdistiller_fsp_matrix`, SUMMED over the pairs (the reference zoo
    averages its three). The channel counts must agree pair by pair (RepDistiller refuses
    others)."""
    if len(student_maps) != len(teacher_maps) or len(student_maps) < 2:
        raise ValueError("repdistiller_fsp: one teacher map per student map, at least two")
    losses = []
    for i in range(len(student_maps) - 1):
        g_s = repdistiller_fsp_matrix(student_maps[i], student_maps[i + 1])
        g_t = repdistiller_fsp_matrix(teacher_maps[i], teacher_maps[i + 1])
        if g_s.shape != g_t.shape:
            raise ValueError(f"repdistiller_fsp: FSP matrices of pair {i} have shapes "
                             f"{tuple(g_s.shape)} and {tuple(g_t.shape)}")
        losses.append((g_s - g_t).pow(2).mean())
    return sum(losses[1:], losses[0])


def repdistiller_factor(factor: Tensor, p: float = 2.0) -> Tensor:
    """RepDistiller's ``FactorTransfer.factor``: the channel mean of f^p (p1 = 2), flattened to
    (B, H*W) and L2-normalised per sample (``F.normalize``). The reference zoo normalises the
    whole flattened factor instead."""
    return F.normalize(factor.pow(p).mean(dim=1).reshape(factor.shape[0], -1), p=2.0, dim=1)


def repdistiller_factor_transfer(student_factor: Tensor, teacher_factor: Tensor) -> Tensor:
    """RepDistiller's ``FactorTransfer.factor_loss`` with its defaults (p1 = 2, p2 = 1): after
    :func:`repdistiller_match_size`, the mean over B*H*W of
    |factor(translator(s)) - factor(paraphraser factor(t))| with factor =
    :func:`repdistiller_factor`. The factors' channel counts may differ."""
    student_factor, teacher_factor = repdistiller_match_size(student_factor, teacher_factor)
    return (repdistiller_factor(student_factor) - repdistiller_factor(teacher_factor)).abs().mean()
