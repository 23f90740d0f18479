"""Losses on logits: regression, soft targets, mutual learning."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["boundary_supporting_kl", "logits_mse", "mutual_learning", "soft_target",
           "standardize_logits"]


def logits_mse(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Regressing logits (Ba & Caruana, "Do Deep Nets Really Need to be Deep?", NIPS 2014):
    mean over batch and classes of (z_s - z_t)^2."""
    return F.mse_loss(student_logits, teacher_logits)


def soft_target(student_logits: Tensor, teacher_logits: Tensor,
                temperature: float | Tensor = 4.0) -> Tensor:
    """Soft targets (Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network",
    NIPS Deep Learning Workshop 2014): T^2 * KL(softmax(z_t/T) || softmax(z_s/T)), summed over
    classes and averaged over the batch ('batchmean'), as the reference zoo's ``SoftTarget``."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_p_student, p_teacher, reduction="batchmean")
    return kl * (temperature * temperature)


def mutual_learning(logits: Tensor, peer_logits: Tensor) -> Tensor:
    """Deep mutual learning (Zhang, Xiang, Hospedales & Lu, "Deep Mutual Learning", CVPR 2018):
    KL(softmax(z_peer) || softmax(z)) = (1/B) sum_b sum_k p_peer_bk (log p_peer_bk - log p_bk),
    with no temperature and 'batchmean', as the reference zoo's ``DML``.

    Gradients flow into both arguments: the caller detaches ``peer_logits`` (each network learns
    from the other's current prediction, taken as a constant target).
    """
    log_p = F.log_softmax(logits, dim=1)
    p_peer = F.softmax(peer_logits, dim=1)
    return F.kl_div(log_p, p_peer, reduction="batchmean")


def boundary_supporting_kl(student_logits: Tensor, teacher_logits: Tensor,
                           temperature: float = 3.0, squared_temperature: bool = False) -> Tensor:
    """The distillation loss on boundary supporting samples (Heo, Lee, Yun & Choi, "Knowledge
    Distillation with Adversarial Samples Supporting Decision Boundary", AAAI 2019):
    KL(softmax(z_t/T) || softmax(z_s/T)) with 'batchmean', T = 3.

    Reference zoo behaviour (kd_losses/bss.py): the usual T^2 factor is commented out, so by
    default the loss is NOT multiplied by T^2; ``squared_temperature=True`` multiplies by T^2 as
    in Hinton et al.'s soft targets.
    """
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_p_student, p_teacher, reduction="batchmean")
    return kl * (temperature * temperature) if squared_temperature else kl


def standardize_logits(logits: Tensor) -> Tensor:
    """Logit standardization (Sun et al., "Logit Standardization in Knowledge Distillation",
    CVPR 2024; sunshangquan/logit-standardization-KD ``normalize``): the z-score of each sample's
    logits, (z - mean) / (std + 1e-7), with the unbiased (n - 1) standard deviation over the
    last dimension, as the reference's ``logit.std(dim=-1, keepdims=True)``."""
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (std + 1e-7)
