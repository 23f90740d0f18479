"""RepDistiller's forms of the feature-map losses where they differ from the reference zoo's
(:mod:`kdzoo.functional.maps`): the methods' ``variant="repdistiller"`` uses them.

Tian, Krishnan & Isola's CRD code base, github.com/HobbitLong/RepDistiller:
``distiller_zoo/AT.py`` (``Attention.at_loss``, ``Attention.at``) and the spatial matching that
``AT.py`` and ``NST.py`` share. Pure functions, float32 or float64 in, the same dtype out.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["repdistiller_attention_map", "repdistiller_attention_transfer",
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
