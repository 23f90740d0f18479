"""Losses of the logit methods beyond Hinton's KD: decoupled KD (DKD), DIST, normalized KD (NKD),
weighted soft labels (WSLD), refined logits (RLD) and scale decoupled distillation (SDD).

Every function returns, for the same inputs, the value its reference code returns (each
docstring names the reference). Where a reference takes the log of a sum of probabilities or
masks classes by subtracting a large constant, the functions here compute the same quantity in
log space or over the kept classes only: the values agree to rounding wherever the reference is
finite, and stay finite, with finite gradients, where the reference overflows (mdistiller issue
#60: DKD on two classes).

Teacher logits are used as given: a frozen teacher's logits carry no gradient, so where a
reference detaches a teacher quantity (NKD's target probability) the value and the student's
gradient are the same here. What the references compute from the student without gradient is
computed without gradient here too: WSLD's sample weights, and the masks and region weights of
RLD and SDD (argmax/comparisons, not differentiable anyway).
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["decoupled_kd", "dist", "normalized_kd", "refined_logit_distillation",
           "scale_decoupled_kd", "sdd_region_weights", "spatial_pyramid_pool",
           "weighted_soft_label_kd"]

SDDBase = Literal["kd", "dkd", "nkd"]
#: The classes of NKD's normalized (second) softmax: "non_target", the K - 1 classes other than
#: the label (yzd-v/cls_KD since 9466b3f); "all", every class, the target included (cls_KD
#: before that commit, and SDD's ``nkd.py`` and ``SDD_nkd.py``, which SDD's NKD and SD-NKD
#: numbers were produced with).
NKDMask = Literal["non_target", "all"]


# ------------------------------------------------------------------------------- helpers
def _label_mask(logits: Tensor, target: Tensor) -> Tensor:
    """Boolean mask of ``target``'s class in each row of ``logits`` (any leading shape)."""
    return F.one_hot(target.long(), logits.shape[-1]).bool()


def _masked_log_softmax(logits: Tensor, keep: Tensor) -> Tensor:
    """log-softmax over the kept classes of each row, 0 (not -inf) at the others; rows that keep
    nothing are all 0. Finite everywhere, so products with it never make NaN gradients."""
    any_kept = keep.any(dim=-1, keepdim=True)
    safe_keep = keep | ~any_kept
    log_p = torch.log_softmax(logits.masked_fill(~safe_keep, float("-inf")), dim=-1)
    return torch.where(keep, log_p, torch.zeros_like(log_p))


def _kl_rows(student: Tensor, teacher: Tensor, keep: Tensor | None = None) -> Tensor:
    """KL(softmax(teacher) || softmax(student)) of each row, both softmaxes over the kept classes
    only (all classes when ``keep`` is None); 0 for rows that keep nothing. The terms where the
    teacher's probability is 0 are 0 (``xlogy``), as ``F.kl_div`` computes them."""
    if keep is None:
        keep = torch.ones_like(student, dtype=torch.bool)
    log_p_s = _masked_log_softmax(student, keep)
    log_p_t = _masked_log_softmax(teacher, keep)
    p_t = torch.where(keep, log_p_t.exp(), torch.zeros_like(log_p_t))
    return (p_t * (log_p_t - log_p_s)).sum(dim=-1)


def _binary_log_probs(logits: Tensor, index: Tensor) -> Tensor:
    """log [p_index, 1 - p_index] of softmax(logits) per row, (..., 2), computed as logsumexps
    (DKD's ``cat_mask`` sums the probabilities and takes their log, which is -inf once the rest
    underflows)."""
    mask = _label_mask(logits, index)
    log_norm = torch.logsumexp(logits, dim=-1, keepdim=True)
    chosen = (logits.masked_fill(~mask, 0.0)).sum(dim=-1, keepdim=True)
    rest = torch.logsumexp(logits.masked_fill(mask, float("-inf")), dim=-1, keepdim=True)
    return torch.cat([chosen, rest], dim=-1) - log_norm


def _binary_kl_rows(log_student: Tensor, log_teacher: Tensor) -> Tensor:
    """KL between two-point distributions given as log-probabilities, per row."""
    return (log_teacher.exp() * (log_teacher - log_student)).sum(dim=-1)


def _decoupled_rows(student: Tensor, teacher: Tensor, target: Tensor, alpha: float,
                    beta: float, temperature: float | Tensor) -> Tensor:
    """alpha * T^2 * TCKD + beta * T^2 * NCKD of each row (DKD's ``dkd_loss`` before the batch
    mean)."""
    s, t = student / temperature, teacher / temperature
    tckd = _binary_kl_rows(_binary_log_probs(s, target), _binary_log_probs(t, target))
    nckd = _kl_rows(s, t, ~_label_mask(s, target))
    return (alpha * tckd + beta * nckd) * (temperature * temperature)


def _normalized_rows(student: Tensor, teacher: Tensor, target: Tensor,
                     temperature: float | Tensor, gamma: float,
                     mask: NKDMask = "non_target") -> Tensor:
    """NKD's loss of each row: -p_t[y] log p_s[y] - gamma T^2 sum_k q_t,k log q_s,k, with q the
    softmax at T over the non-target classes (``mask="non_target"``, k != y) or over all the
    classes (``mask="all"``, the target kept)."""
    index = target.long().unsqueeze(-1)
    log_p_s = torch.log_softmax(student, dim=-1).gather(-1, index).squeeze(-1)
    p_t = torch.softmax(teacher, dim=-1).gather(-1, index).squeeze(-1)
    if mask == "non_target":
        keep = ~_label_mask(student, target)
    elif mask == "all":
        keep = torch.ones_like(student, dtype=torch.bool)
    else:
        raise ValueError(f"unknown NKD mask {mask!r}; choose non_target or all")
    log_q_s = _masked_log_softmax(student / temperature, keep)
    q_t = torch.where(keep, _masked_log_softmax(teacher / temperature, keep).exp(),
                      torch.zeros_like(log_q_s))
    non_target = (q_t * log_q_s).sum(dim=-1)
    return -(p_t * log_p_s) - gamma * (temperature * temperature) * non_target


# ---------------------------------------------------------------------------------- DKD
def decoupled_kd(student_logits: Tensor, teacher_logits: Tensor, target: Tensor,
                 alpha: float = 1.0, beta: float = 8.0,
                 temperature: float | Tensor = 4.0) -> Tensor:
    """Decoupled knowledge distillation (Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge
    Distillation", CVPR 2022; megvii-research/mdistiller ``mdistiller/distillers/DKD.py``,
    ``dkd_loss``): alpha * TCKD + beta * NCKD, both T^2-scaled and averaged over the batch.

    TCKD is the KL divergence between the binary distributions [p_y, 1 - p_y] of teacher and
    student at temperature T (y the label); NCKD the KL divergence between their softmaxes over
    the non-target classes. The reference masks the target class by subtracting 1000 from its
    scaled logit and takes ``log`` of summed probabilities; here the non-target softmax is over
    the other classes exactly and the binary log-probabilities are logsumexps, so the values are
    the reference's wherever it is finite, and two classes work (mdistiller issue #60: NCKD has a
    single non-target class, so it is exactly 0 with zero gradient, and a confident student no
    longer makes log(0) = -inf).
    """
    rows = _decoupled_rows(student_logits, teacher_logits, target, alpha, beta, temperature)
    return rows.mean()


# --------------------------------------------------------------------------------- DIST
def _pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of the rows of ``a`` and ``b``: the cosine of the centred rows, with
    ``eps`` added to the product of norms (the reference's ``pearson_correlation``)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist(student_logits: Tensor, teacher_logits: Tensor, beta: float = 1.0, gamma: float = 1.0,
         temperature: float | Tensor = 1.0) -> Tensor:
    """DIST (Huang, You, Wang, Qian & Xu, "Knowledge Distillation from A Stronger Teacher",
    NeurIPS 2022; hunto/image_classification_sota ``lib/models/losses/dist_kd.py``):
    T^2 * (beta * (1 - mean_b rho(y_s,b, y_t,b)) + gamma * (1 - mean_k rho(y_s,:k, y_t,:k))),
    with y = softmax(z / T), rho the Pearson correlation (eps 1e-8 in its denominator); the first
    term matches each sample's class distribution (inter-class relation), the second each class's
    distribution over the batch (intra-class relation).
    """
    y_s = torch.softmax(student_logits / temperature, dim=1)
    y_t = torch.softmax(teacher_logits / temperature, dim=1)
    inter = 1 - _pearson_rows(y_s, y_t).mean()
    intra = 1 - _pearson_rows(y_s.transpose(0, 1), y_t.transpose(0, 1)).mean()
    return (temperature * temperature) * (beta * inter + gamma * intra)


# ---------------------------------------------------------------------------------- NKD
def normalized_kd(student_logits: Tensor, teacher_logits: Tensor, target: Tensor,
                  temperature: float | Tensor = 1.0, gamma: float = 1.5,
                  mask: NKDMask = "non_target") -> Tensor:
    """Normalized KD (Yang, Zeng, Li, Zhang, Yuan & Li, "From Knowledge Distillation to
    Self-Knowledge Distillation: A Unified Approach with Normalized Loss and Customized Soft
    Labels", ICCV 2023; yzd-v/cls_KD@1e5d48f:mmcls/models/dis_losses/nkd.py, ``NKDLoss``):

    mean_b [-p_t(y) log p_s(y)] - gamma T^2 mean_b sum_k q_t,k log q_s,k,

    the target term at temperature 1, q the softmax at T over the classes ``mask`` keeps (the
    "normalized" non-target distributions). Like the reference it is a cross-entropy, not a KL
    divergence (it differs from one by the teacher's entropy, which has no gradient).

    ``mask`` names the two versions of the reference's ``scatter_`` mask:

    * ``"non_target"`` (default): the K - 1 classes other than the label, as cls_KD computes
      since its commit 9466b3f (2023-10-10, ``scatter_(1, label, 0)``, cls_KD issue #16). With
      two classes the non-target part is 0.
    * ``"all"``: every class, the target included: ``scatter_(1, label, 1)`` keeps all of them,
      as cls_KD did before 9466b3f and as shicaiwei123/SDD-CVPR2024@e412036 still does in
      ``mdistiller/distillers/nkd.py`` (line 23) and ``SDD_nkd.py`` (lines 23, 53), the code
      behind SDD's NKD and SD-NKD numbers.
    """
    return _normalized_rows(student_logits, teacher_logits, target, temperature, gamma,
                            mask).mean()


# --------------------------------------------------------------------------------- WSLD
def _wsld_sample_weights(student_logits: Tensor, teacher_logits: Tensor,
                         target: Tensor) -> Tensor:
    """WSLD's per-sample weights 1 - exp(-max(CE_s / (CE_t + 1e-7), 0)), from the cross-entropies
    of the (detached) student and teacher logits at temperature 1."""
    index = target.long().unsqueeze(1)
    ce_s = -torch.log_softmax(student_logits.detach(), dim=1).gather(1, index).squeeze(1)
    ce_t = -torch.log_softmax(teacher_logits.detach(), dim=1).gather(1, index).squeeze(1)
    ratio = torch.clamp_min(ce_s / (ce_t + 1e-7), 0.0)
    return 1 - torch.exp(-ratio)


def weighted_soft_label_kd(student_logits: Tensor, teacher_logits: Tensor, target: Tensor,
                           temperature: float | Tensor = 4.0, alpha: float = 2.25) -> Tensor:
    """Weighted soft labels (Zhou, Song, Chen, Zhou, Wang, Yuan & Zhang, "Rethinking Soft Labels
    for Knowledge Distillation: A Bias-Variance Tradeoff Perspective", ICLR 2021;
    bellymonster/Weighted-Soft-Label-Distillation ``knowledge_distiller.py`` and its port
    yzd-v/cls_KD ``mmcls/models/dis_losses/wsld.py``):

    alpha * T^2 * mean_b w_b * (-sum_k softmax(z_t/T)_k log softmax(z_s/T)_k),

    w_b = 1 - exp(-max(CE(z_s,b, y) / (CE(z_t,b, y) + 1e-7), 0)) from the logits at temperature 1,
    without gradient (both references detach them). The soft term is a cross-entropy, as there.
    Defaults: cls_KD's CIFAR-100 setting (T 4, alpha 2.25); the original code's ImageNet setting
    is T 2, alpha 2.5.
    """
    soft = -(torch.softmax(teacher_logits / temperature, dim=1)
             * torch.log_softmax(student_logits / temperature, dim=1)).sum(dim=1)
    weights = _wsld_sample_weights(student_logits, teacher_logits, target)
    return alpha * (temperature * temperature) * (weights * soft).mean()


# ---------------------------------------------------------------------------------- RLD
def refined_logit_distillation(student_logits: Tensor, teacher_logits: Tensor, target: Tensor,
                               alpha: float = 1.0, beta: float = 8.0,
                               temperature: float | Tensor = 4.0,
                               alpha_temperature: float | Tensor = 1.0) -> Tensor:
    """Refined logit distillation (Sun, Chen, Lyu, Chen, Chen & Wang, "Knowledge Distillation
    with Refined Logits", ICCV 2025, arXiv:2408.07703; zju-SWJ/RLD
    ``mdistiller/distillers/RLD.py``, ``rld_loss``): alpha * SCD + beta * MCD.

    * Sample confidence distillation (SCD), at ``alpha_temperature`` T_a: KL between the
      teacher's binary distribution [p_t(argmax teacher), rest] and the student's
      [p_s(label), rest], 'batchmean', times T_a^2.
    * Masked correlation distillation (MCD), at ``temperature`` T: KL between teacher and student
      softmaxes over the classes whose teacher logit is below the teacher's logit at the label
      (the label and every class the teacher ranks at least as high are masked), 'batchmean',
      times T^2. A row where every class is masked contributes 0, as in the reference.

    The reference masks with -1e9 and takes ``log`` of summed probabilities; here the masked
    classes are left out exactly and the binary log-probabilities are logsumexps (the same values
    wherever the reference is finite). Defaults are the reference config's (T_a 1); the
    ``--same-t`` recipe sets T_a = T.
    """
    s_a, t_a = student_logits / alpha_temperature, teacher_logits / alpha_temperature
    teacher_top = teacher_logits.argmax(dim=1)
    scd = _binary_kl_rows(_binary_log_probs(s_a, target), _binary_log_probs(t_a, teacher_top))
    at_label = teacher_logits.gather(1, target.long().unsqueeze(1))
    keep = (teacher_logits < at_label).detach()
    mcd = _kl_rows(student_logits / temperature, teacher_logits / temperature, keep)
    return (alpha * (alpha_temperature * alpha_temperature) * scd.mean()
            + beta * (temperature * temperature) * mcd.mean())


# ---------------------------------------------------------------------------------- SDD
def spatial_pyramid_pool(feature_map: Tensor, scales: Sequence[int] = (1, 2, 4)) -> Tensor:
    """SDD's spatial pyramid (shicaiwei123/SDD-CVPR2024@e412036
    ``mdistiller/models/cifar/utils.py``, ``SPP``): the (B, C, H, W) map average-pooled to a
    4 x 4 grid (``AdaptiveAvgPool2d``), then that grid average-pooled to s x s for each scale s;
    returns (B, N, C), N = sum s^2, the regions in the order of ``scales`` and row-major within a
    scale (the first region of scale 1 is the global average of the grid)."""
    grid = F.adaptive_avg_pool2d(feature_map, 4)
    regions = [F.adaptive_avg_pool2d(grid, s).flatten(2) for s in scales]
    return torch.cat(regions, dim=2).transpose(1, 2)


def sdd_region_weights(teacher_region_logits: Tensor, target: Tensor) -> Tensor:
    """SDD's weight of each region's loss, (B, N), from the teacher's (B, N, K) region logits
    (region 0 the global one): 2 where the teacher's prediction on a local region is right and
    on the global region wrong, or the reverse (complementary knowledge); 1 elsewhere, the global
    region included (consistent knowledge)."""
    correct = teacher_region_logits.argmax(dim=-1) == target.long().unsqueeze(1)
    differs = correct != correct[:, :1]
    return 1.0 + differs.to(teacher_region_logits.dtype)


def scale_decoupled_kd(student_region_logits: Tensor, teacher_region_logits: Tensor,
                       target: Tensor, base: SDDBase = "dkd", temperature: float | Tensor = 4.0,
                       alpha: float = 1.0, beta: float = 8.0,
                       nkd_mask: NKDMask = "non_target") -> Tensor:
    """Scale decoupled distillation (Wei, Luo & Luo, "Scale Decoupled Distillation", CVPR 2024;
    shicaiwei123/SDD-CVPR2024@e412036 ``mdistiller/distillers/KD.py`` ``sdd_kd_loss``,
    ``SDD_DKD.py`` ``multi_dkd``, ``SDD_nkd.py`` ``multi_nkd_loss``):

    sum_{b,n} w_b,n L(z_s,b,n, z_t,b,n, y_b) / (B N)

    over the (B, N, K) region logits (region 0 the global one), w from
    :func:`sdd_region_weights`, L the base loss of one row:

    * ``"kd"``: T^2 KL(softmax(z_t/T) || softmax(z_s/T));
    * ``"dkd"``: alpha T^2 TCKD + beta T^2 NCKD, as :func:`decoupled_kd`;
    * ``"nkd"``: NKD's row loss (:func:`normalized_kd`) with gamma = ``beta`` (``SDD_nkd.py``
      reads ``cfg.DKD.BETA`` as gamma and ``cfg.DKD.T`` as its temperature) and ``nkd_mask``:
      "non_target" (default) the corrected mask of cls_KD, "all" the reference's own
      (``SDD_nkd.py`` line 53 keeps the target class in the normalized softmax).

    With one region (scales (1,)) every weight is 1 and this is the base loss of the global
    logits. No non-finite loss is silently replaced by 0 (the reference's final
    ``isnan``/``isinf`` guard); the per-element NaNs the reference zeroes in ``sdd_kd_loss``
    cannot occur here.
    """
    weights = sdd_region_weights(teacher_region_logits.detach(), target)
    labels = target.long().unsqueeze(1).expand(weights.shape)
    if base == "kd":
        rows = _kl_rows(student_region_logits / temperature,
                        teacher_region_logits / temperature) * (temperature * temperature)
    elif base == "dkd":
        rows = _decoupled_rows(student_region_logits, teacher_region_logits, labels, alpha,
                               beta, temperature)
    elif base == "nkd":
        rows = _normalized_rows(student_region_logits, teacher_region_logits, labels,
                                temperature, beta, nkd_mask)
    else:
        raise ValueError(f"unknown SDD base loss {base!r}; choose kd, dkd or nkd")
    return (weights * rows).sum() / weights.numel()
