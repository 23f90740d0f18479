"""Wasserstein distances for knowledge distillation (WKD): the discrete distance between the
predicted class distributions of WKD-L, solved by entropy-regularised optimal transport (Sinkhorn
iterations) over a class-to-class cost, and the closed-form 2-Wasserstein distance between
diagonal Gaussians of feature maps of WKD-F.

"Wasserstein Distance Rivals Kullback-Leibler Divergence for Knowledge Distillation", Lv, Yang &
Li, NeurIPS 2024; the authors' code is JiamingLv/WKD@214cf88 (https://github.com/JiamingLv/WKD):
``mdistiller/distillers/WKD.py`` (``sinkhorn``, ``wkd_logit_loss``,
``wkd_logit_loss_with_speration``, ``adaptive_avg_std_pool2d``, ``wkd_feature_loss``) and
``tools/generate_cost_matrix.py`` (the linear-CKA cost). Every function is a pure function of
tensors, float32 or float64 in, the same dtype out.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "cosine_cost",
    "gaussian_wasserstein",
    "linear_cka_cost",
    "sharpen_cost",
    "sinkhorn_distance",
    "sinkhorn_plan",
    "wkd_logit",
]

#: Added to every Sinkhorn denominator (the reference's ``+ 1e-8``) and to the cost after its
#: ReLU in WKD-L.
SINKHORN_EPS = 1e-8


def sinkhorn_plan(p: Tensor, q: Tensor, cost: Tensor, reg: float = 0.05,
                  iterations: int = 10) -> Tensor:
    """The entropy-regularised transport plan between the rows of ``p`` and ``q`` (B, N), the
    reference's ``sinkhorn``: K = exp(-cost / reg), u = 1/N, then ``iterations`` times
    v = q / (K^T u + 1e-8), u = p / (K v + 1e-8); the plan is diag(u) K diag(v), (B, N, N).

    ``cost`` is (N, N), shared by the batch, or (B, N, N). Gradients flow through every
    iteration, as in the reference (which does not detach them either)."""
    batch, n = p.shape
    kernel = torch.exp(-cost / reg)
    if kernel.dim() == 2:
        kernel = kernel.expand(batch, n, n)
    u = torch.full_like(p, 1.0 / n)
    v = q
    for _ in range(iterations):
        v = q / (torch.einsum("bij,bi->bj", kernel, u) + SINKHORN_EPS)
        u = p / (torch.einsum("bij,bj->bi", kernel, v) + SINKHORN_EPS)
    return u.unsqueeze(2) * kernel * v.unsqueeze(1)


def sinkhorn_distance(p: Tensor, q: Tensor, cost: Tensor, reg: float = 0.05,
                      iterations: int = 10, support: Tensor | None = None) -> Tensor:
    """Per-row transport cost sum_ij plan_ij cost_ij of :func:`sinkhorn_plan`, shape (B,), for a
    cost (N, N) shared by the batch, without building the (B, N, N) plan.

    ``support`` (B, N) bool restricts row b to the classes where it is True: the problem is then
    the reference's on the sub-vectors and the sub-matrix of the cost (u starts at 1/|support|,
    entries outside stay 0), which is how WKD-L drops the target class of every sample without
    gathering a (B, N-1, N-1) cost. ``p`` and ``q`` must sum to one over the support."""
    kernel = torch.exp(-cost / reg)
    weighted = kernel * cost
    if support is None:
        u = torch.full_like(p, 1.0 / p.shape[1])
    else:
        p = p.masked_fill(~support, 0.0)
        q = q.masked_fill(~support, 0.0)
        u = support.to(p.dtype) / support.sum(dim=1, keepdim=True).to(p.dtype)
    v = q
    for _ in range(iterations):
        v = q / (u @ kernel + SINKHORN_EPS)
        u = p / (v @ kernel.t() + SINKHORN_EPS)
    return ((u @ weighted) * v).sum(dim=1)


def wkd_logit(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, cost: Tensor,
              temperature: float = 8.0, reg: float = 0.05,
              iterations: int = 10) -> tuple[Tensor, Tensor]:
    """WKD-L, the reference's ``wkd_logit_loss_with_speration``: ``(target, distance)``; the
    loss is ``target + weight * distance``.

    * ``target`` = -mean_b p^t_b[y_b] log p^s_b[y_b], softmaxes at temperature 1, the teacher's
      probability detached (the target-class term, never weighted);
    * ``distance`` = mean_b of the Sinkhorn transport cost (:func:`sinkhorn_distance`, ``reg``,
      ``iterations``) between the student's and the teacher's softmax at ``temperature`` over
      the non-target classes (the target logit removed before the softmax), with the cost
      ReLU(cost) + 1e-8 restricted to the non-target classes.

    ``cost`` (N, N) is a class-to-class distance (:func:`cosine_cost`, :func:`linear_cka_cost`,
    possibly :func:`sharpen_cost`-ed); ``labels`` are (B,) class indices."""
    index = labels.reshape(-1, 1).long()
    log_student = F.log_softmax(student_logits, dim=1)
    teacher_prob = F.softmax(teacher_logits, dim=1)
    target = -(teacher_prob.gather(1, index).detach() * log_student.gather(1, index)).mean()

    support = torch.ones_like(student_logits, dtype=torch.bool).scatter_(1, index, False)
    p = F.softmax((student_logits / temperature).masked_fill(~support, -math.inf), dim=1)
    q = F.softmax((teacher_logits / temperature).masked_fill(~support, -math.inf), dim=1)
    cost = F.relu(cost) + SINKHORN_EPS
    distance = sinkhorn_distance(p, q, cost.to(p.dtype), reg, iterations, support).mean()
    return target, distance


def cosine_cost(prototypes: Tensor) -> Tensor:
    """The reference's ``COST_MATRIX: fc`` cost: 1 - cos(w_i, w_j) between the rows of the
    teacher's classifier weight (N classes x D), (N, N), rows L2-normalised with ``F.normalize``
    (eps 1e-12)."""
    unit = F.normalize(prototypes, p=2, dim=-1)
    return 1 - unit @ unit.t()


def sharpen_cost(cost: Tensor, sharpen: float = 1.0) -> Tensor:
    """The reference's ``COST_MATRIX_SHARPEN`` s: 1 - exp(-s * cost), and the cost itself when
    s is 0."""
    if sharpen == 0:
        return cost
    return 1 - torch.exp(-sharpen * cost)


def linear_cka_cost(class_features: Tensor) -> Tensor:
    """The reference's cost (``tools/generate_cost_matrix.py``, ``linear_CKA_precenter``): for
    class features (N, M, D) -- M samples of each class from the trained teacher on its training
    images under the test transforms (``tools/generate_class_proto.py``): its logits on ImageNet
    (the first M = min class count), its last-stage feature maps on CIFAR-100
    (``generate_cost_matrix.sh``: ``--feature_type feature``, every spatial position of every
    image a sample of D = C channels) -- cost_ij = 1 - CKA(X_i, X_j) with the linear CKA of
    column-centred X_i, X_j: ||X_j^T X_i||_F^2 / (||X_i^T X_i||_F ||X_j^T X_j||_F). Computed
    offline, saved with ``torch.save`` and given to wkd as ``cost_path``.

    Computed through the sample Gram matrices G_i = X_i X_i^T (M x M): ||X_j^T X_i||_F^2 =
    <G_i, G_j>_F and ||X_i^T X_i||_F = ||G_i||_F, the same numbers as the reference's loop over
    pairs of D x D products."""
    centred = class_features - class_features.mean(dim=1, keepdim=True)
    grams = (centred @ centred.transpose(1, 2)).flatten(1)          # (N, M*M)
    norms = torch.linalg.vector_norm(grams, dim=1)
    cka = (grams @ grams.t()) / (norms.unsqueeze(1) * norms.unsqueeze(0))
    return 1 - cka


def _window(index: int, cells: int, size: int) -> tuple[int, int]:
    """[start, end) of adaptive-pooling cell ``index`` of ``cells`` over ``size`` positions."""
    return (index * size) // cells, -(-((index + 1) * size) // cells)


def _grid_mean_std(feat: Tensor, grid: int, eps: float) -> tuple[Tensor, Tensor]:
    """Per channel and grid cell: the mean and sqrt(unbiased variance + eps) over the cell (the
    reference's ``adaptive_avg_std_pool2d``; adaptive-pooling cells), (B, C, grid, grid)."""
    height, width = feat.shape[2], feat.shape[3]
    means, stds = [], []
    for row in range(grid):
        top, bottom = _window(row, grid, height)
        row_means, row_stds = [], []
        for col in range(grid):
            left, right = _window(col, grid, width)
            block = feat[:, :, top:bottom, left:right]
            row_means.append(block.mean(dim=(-1, -2)))
            row_stds.append(torch.sqrt(block.var(dim=(-1, -2)) + eps))
        means.append(torch.stack(row_means, dim=-1))
        stds.append(torch.stack(row_stds, dim=-1))
    return torch.stack(means, dim=-2), torch.stack(stds, dim=-2)


def gaussian_wasserstein(student_feat: Tensor, teacher_feat: Tensor, eps: float = 1e-5,
                         grid: int = 1) -> tuple[Tensor, Tensor]:
    """WKD-F, the reference's ``wkd_feature_loss``: every channel of a map (or of each cell of a
    ``grid`` x ``grid`` adaptive partition of it) is a 1-D Gaussian with the spatial mean and the
    standard deviation sqrt(var + eps) (unbiased variance); the squared 2-Wasserstein distance
    between diagonal Gaussians splits into ``(mean_term, std_term)``:

    mean_term = sum (mu_s - mu_t)^2 / (B grid^2), std_term = sum (sigma_s - sigma_t)^2 / (B grid^2)

    summed over channels and cells. The loss is ``ratio * mean_term + std_term``. Maps of equal
    shape (B, C, H, W); a cell of one position has no variance (NaN, as in the reference)."""
    if student_feat.shape != teacher_feat.shape:
        raise ValueError(f"gaussian_wasserstein needs maps of one shape, got "
                         f"{tuple(student_feat.shape)} and {tuple(teacher_feat.shape)}")
    batch = student_feat.shape[0]
    if grid == 1:
        mu_s, mu_t = student_feat.mean(dim=(-1, -2)), teacher_feat.mean(dim=(-1, -2))
        sd_s = torch.sqrt(student_feat.var(dim=(-1, -2)) + eps)
        sd_t = torch.sqrt(teacher_feat.var(dim=(-1, -2)) + eps)
    else:
        mu_s, sd_s = _grid_mean_std(student_feat, grid, eps)
        mu_t, sd_t = _grid_mean_std(teacher_feat, grid, eps)
    scale = batch * grid * grid
    mean_term = F.mse_loss(mu_s, mu_t, reduction="sum") / scale
    std_term = F.mse_loss(sd_s, sd_t, reduction="sum") / scale
    return mean_term, std_term
