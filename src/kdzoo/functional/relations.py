"""Losses on relations between the samples of a batch: PKT, RKD, CC, IRG, and CRD's contrastive
NCE loss on memory-bank scores.

Each function computes the loss of ONE (student, teacher) pair exactly as the reference
Knowledge-Distillation-Zoo does (AberHu/Knowledge-Distillation-Zoo@65470c8: kd_losses/); the
methods in :mod:`kdzoo.methods` apply the weights. Relations are B x B (or B x B x B) structures or
per-sample scalars, so student and teacher may have any widths. Nothing is modified in place and
the result has the inputs' dtype.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "contrastive_memory_scores",
    "contrastive_nce_loss",
    "correlation_congruence",
    "instance_relation_graph",
    "irg_edge",
    "irg_transformation",
    "irg_vertex",
    "pairwise_distances",
    "probabilistic_knowledge_transfer",
    "relational_kd",
    "rkd_angle",
    "rkd_distance",
]


# ------------------------------------------------------------------------------------------ PKT
def _pkt_conditional_probabilities(emb: Tensor, eps: float) -> Tensor:
    """P_ij = C_ij / sum_k C_ik with C = (u u^T + 1) / 2 and u = f / (||f|| + eps)."""
    emb = emb.flatten(1)
    norm = torch.sqrt(torch.sum(emb**2, dim=1, keepdim=True))
    unit = emb / (norm + eps)
    # The reference zeroes NaNs in place (quirk 14); torch.where leaves the caller's tensor alone.
    unit = torch.where(torch.isnan(unit), torch.zeros_like(unit), unit)
    kernel = (unit @ unit.t() + 1.0) / 2.0
    return kernel / torch.sum(kernel, dim=1, keepdim=True)


def probabilistic_knowledge_transfer(student_emb: Tensor, teacher_emb: Tensor,
                                     eps: float = 1e-6) -> Tensor:
    """Probabilistic knowledge transfer ("Learning Deep Representations with Probabilistic
    Knowledge Transfer", Passalis & Tefas, ECCV 2018), cosine-similarity kernel.

    u = f / (||f||_2 + eps) with NaNs set to 0, C = (u u^T + 1) / 2 (diagonal included),
    P = C / rowsum(C), and the loss is mean_{i,j} P^t_ij log((P^t_ij + eps) / (P^s_ij + eps)).
    As in the reference zoo this is a MEAN over the B^2 entries (the paper sums the KL over i);
    the loss is tiny, hence the large example weight (10000). Inputs (B, D) of any widths.
    """
    p_student = _pkt_conditional_probabilities(student_emb, eps)
    p_teacher = _pkt_conditional_probabilities(teacher_emb, eps)
    return torch.mean(p_teacher * torch.log((p_teacher + eps) / (p_student + eps)))


# ------------------------------------------------------------------------------------------ RKD
def pairwise_distances(emb: Tensor, squared: bool = False, eps: float = 1e-12) -> Tensor:
    """B x B Euclidean distances of the rows of ``emb`` (flattened), reference form:
    sqrt(clamp(||f_i||^2 + ||f_j||^2 - 2 f_i.f_j, min=eps)) (no sqrt if ``squared``), with the
    diagonal set to 0 (out of place, so it carries no gradient)."""
    emb = emb.flatten(1)
    square = emb.pow(2).sum(dim=1)
    dist = (square.unsqueeze(0) + square.unsqueeze(1) - 2 * (emb @ emb.t())).clamp(min=eps)
    if not squared:
        dist = dist.sqrt()
    diagonal = torch.eye(dist.shape[0], dtype=torch.bool, device=dist.device)
    return dist.masked_fill(diagonal, 0.0)


def rkd_distance(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """RKD's distance-wise term (Park et al., "Relational Knowledge Distillation", CVPR 2019):
    smooth-L1 (beta 1, mean over B^2) between the distance matrices, each divided by the mean of
    its positive entries."""
    def normalized(emb: Tensor) -> Tensor:
        dist = pairwise_distances(emb)
        # sum / count(> 0) is mean(dist[dist > 0]) without a host sync (the diagonal is 0).
        return dist / (dist.sum() / (dist > 0).sum())

    return F.smooth_l1_loss(normalized(student_emb), normalized(teacher_emb))


def _rkd_angles(emb: Tensor) -> Tensor:
    """A_ijk = <e_ij, e_ik> with e_ij = normalize(f_j - f_i) (zero vector for i = j), flat."""
    emb = emb.flatten(1)
    directions = F.normalize(emb.unsqueeze(0) - emb.unsqueeze(1), p=2, dim=2)
    return torch.bmm(directions, directions.transpose(1, 2)).reshape(-1)


def rkd_angle(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """RKD's angle-wise term (Park et al., CVPR 2019): smooth-L1 (beta 1, mean over B^3) between
    the cosines A_ijk = <e_ij, e_ik>, e_ij = normalize(f_j - f_i). Memory grows as B^2 x D."""
    return F.smooth_l1_loss(_rkd_angles(student_emb), _rkd_angles(teacher_emb))


def relational_kd(student_emb: Tensor, teacher_emb: Tensor, distance_weight: float = 25.0,
                  angle_weight: float = 50.0) -> Tensor:
    """Relational knowledge distillation ("Relational Knowledge Distillation", Park, Kim, Lu &
    Cho, CVPR 2019), reference form: distance_weight * rkd_distance + angle_weight * rkd_angle,
    on (B, D) embeddings of any widths. Unlike the paper's code the teacher's relations are not
    computed under ``no_grad`` here; the teacher's features come detached anyway."""
    return distance_weight * rkd_distance(student_emb, teacher_emb) + \
        angle_weight * rkd_angle(student_emb, teacher_emb)


# ------------------------------------------------------------------------------------------- CC
def _correlation_matrix(emb: Tensor, gamma: float, order: int) -> Tensor:
    unit = F.normalize(emb.flatten(1), p=2, dim=-1)
    similarity = unit @ unit.t()
    corr = torch.zeros_like(similarity)
    for p in range(order + 1):
        coefficient = math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p)
        corr = corr + coefficient * torch.pow(similarity, p)
    return corr


def correlation_congruence(student_emb: Tensor, teacher_emb: Tensor, gamma: float = 0.4,
                           order: int = 2) -> Tensor:
    """Correlation congruence ("Correlation Congruence for Knowledge Distillation", Peng et al.,
    ICCV 2019), reference form: with S = f^ f^T for L2-normalised rows f^, the kernel
    K = sum_{p=0}^{order} e^{-2 gamma} (2 gamma)^p / p! * S^p (elementwise powers; the Taylor
    expansion of the Gaussian RBF exp(-gamma ||f^_i - f^_j||^2)), and the loss is the mean over
    B^2 of (K_s - K_t)^2. Only the correlation term (no instance congruence), as the reference."""
    return F.mse_loss(_correlation_matrix(student_emb, gamma, order),
                      _correlation_matrix(teacher_emb, gamma, order))


# ------------------------------------------------------------------------------------------ IRG
def irg_vertex(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """IRG's vertex term: mean squared error between the logits."""
    return F.mse_loss(student_logits, teacher_logits)


def _irg_edge_matrix(x: Tensor) -> Tensor:
    dist = pairwise_distances(x, squared=True)
    return dist / dist.max()


def irg_edge(student: Tensor, teacher: Tensor) -> Tensor:
    """IRG's edge term for one feature point (vectors or maps, flattened per sample): MSE between
    the B x B squared-distance matrices (clamped at 1e-12, diagonal 0) divided by their max."""
    return F.mse_loss(_irg_edge_matrix(student), _irg_edge_matrix(teacher))


def _reduce_channels(fm: Tensor, channels: int) -> Tensor:
    """Average the channels of ``fm`` down to ``channels`` groups of adjacent channels."""
    have = fm.shape[1]
    if have == 2 * channels:
        return (fm[:, 0::2] + fm[:, 1::2]) / 2.0  # the reference's even/odd pairs, bit for bit
    if have % channels == 0:
        return fm.reshape(fm.shape[0], channels, have // channels, *fm.shape[2:]).mean(dim=2)
    # Groups of unequal (fractional) size, as adaptive pooling along the channel axis.
    return F.adaptive_avg_pool3d(fm.unsqueeze(1), (channels, *fm.shape[2:])).squeeze(1)


def _irg_transformation_vector(fm1: Tensor, fm2: Tensor, eps: float = 1e-12) -> Tensor:
    """v_b = ||a_b - b_b||^2 / max_b, with fm1 and fm2 averaged to a common (C, H, W)."""
    size = (min(fm1.shape[2], fm2.shape[2]), min(fm1.shape[3], fm2.shape[3]))
    if tuple(fm1.shape[2:]) != size:
        fm1 = F.adaptive_avg_pool2d(fm1, size)
    if tuple(fm2.shape[2:]) != size:
        fm2 = F.adaptive_avg_pool2d(fm2, size)
    if fm1.shape[1] < fm2.shape[1]:
        fm2 = _reduce_channels(fm2, fm1.shape[1])
    elif fm1.shape[1] > fm2.shape[1]:
        fm1 = _reduce_channels(fm1, fm2.shape[1])
    dist = torch.sum(torch.pow(fm1.flatten(1) - fm2.flatten(1), 2), dim=-1).clamp(min=eps)
    return dist / dist.max()


def irg_transformation(student_fm1: Tensor, student_fm2: Tensor, teacher_fm1: Tensor,
                       teacher_fm2: Tensor) -> Tensor:
    """IRG's transformation term: MSE between the per-sample vectors v of student and teacher,
    v_b = ||a_b - b_b||^2 / max_b(...), where a and b are the two maps of one network (fm1 before
    fm2) brought to a common shape.

    Reference zoo (quirk 13): a = adaptive_avg_pool2d(fm1, fm2's H x W) and
    b = (fm2[:, 0::2] + fm2[:, 1::2]) / 2, which assumes fm2 has exactly twice fm1's channels and
    is spatially smaller. kdzoo generalises both steps so the term is defined for any shapes:
    the spatially larger map (in H and W separately) is adaptive-average-pooled to the smaller
    size, and the map with more channels is averaged over groups of adjacent channels down to
    the other's count (exact pairs when it has twice as many -- bit-identical to the reference --,
    equal groups when divisible, adaptive pooling along channels otherwise). Both are linear
    averaging steps, so the reference's behaviour is unchanged where its assumption holds.
    """
    return F.mse_loss(_irg_transformation_vector(student_fm1, student_fm2),
                      _irg_transformation_vector(teacher_fm1, teacher_fm2))


def instance_relation_graph(student: Sequence[Tensor], teacher: Sequence[Tensor],
                            vertex_weight: float = 0.1, edge_weight: float = 5.0,
                            transformation_weight: float = 5.0) -> Tensor:
    """Instance relationship graph ("Knowledge Distillation via Instance Relationship Graph",
    Liu et al., CVPR 2019), reference zoo form (one-to-one mode only).

    ``student`` and ``teacher`` are ``(fm1, fm2, emb, logits)`` -- the reference uses rb2 and rb3
    after ReLU, the pooled feature and the logits. Loss = vertex_weight * mse(logits) +
    edge_weight * [irg_edge(emb) + irg_edge(fm1) + irg_edge(fm2)] / 3 +
    transformation_weight * irg_transformation(fm1 -> fm2)."""
    fm_s1, fm_s2, emb_s, logits_s = student
    fm_t1, fm_t2, emb_t, logits_t = teacher
    vertex = irg_vertex(logits_s, logits_t)
    edge = (irg_edge(emb_s, emb_t) + irg_edge(fm_s1, fm_t1) + irg_edge(fm_s2, fm_t2)) / 3.0
    transformation = irg_transformation(fm_s1, fm_s2, fm_t1, fm_t2)
    return vertex_weight * vertex + edge_weight * edge + transformation_weight * transformation


# ------------------------------------------------------------------------------------------ CRD
def contrastive_memory_scores(memory: Tensor, anchors: Tensor, sample_indices: Tensor,
                              temperature: float) -> Tensor:
    """CRD's unnormalised scores exp(<memory[sample_indices[b, j]], anchors[b]> / temperature),
    shape (B, 1 + K) (Tian, Krishnan & Isola, "Contrastive Representation Distillation",
    ICLR 2020).

    The reference gathers a (B, 1+K, D) block of memory rows and multiplies it with the anchors
    (memory traffic of B*(1+K)*D floats per bank); here all N x B dot products are one cheap
    matmul and the (B, 1+K) needed ones are gathered from it -- the same dot products, an order
    of magnitude faster on CPU and GPU alike. ``memory`` (N, D) carries no gradient; the caller
    must not modify it in place before the backward pass (it is saved for the anchors'
    gradient). The result keeps its batch dimension for B = 1 (the reference's ``squeeze()``
    does not).
    """
    all_scores = anchors @ memory.t()  # (B, N)
    return torch.exp(torch.div(all_scores.gather(1, sample_indices), temperature))


def contrastive_nce_loss(scores: Tensor, num_data: int, eps: float = 1e-7) -> Tensor:
    """CRD's NCE loss, Eq. 18 of Tian et al. (ICLR 2020), as the reference ``ContrastLoss``.

    ``scores`` (B, 1+K) are the normalised scores of each anchor against its positive (column 0)
    and K negatives; with M = ``num_data`` and noise mass K/M:
    L = -[sum_b log(x_b0 / (x_b0 + K/M + eps))
          + sum_b sum_{j>=1} log((K/M) / (x_bj + K/M + eps))] / B.
    """
    batch = scores.shape[0]
    negatives = scores.shape[1] - 1
    noise = negatives / float(num_data)
    positive = scores[:, 0]
    log_positive = torch.log(torch.div(positive, positive + (noise + eps)))
    negative = scores[:, 1:]
    log_negative = torch.log(torch.div(torch.full_like(negative, noise),
                                       negative + (noise + eps)))
    return -(log_positive.sum() + log_negative.sum()) / batch
