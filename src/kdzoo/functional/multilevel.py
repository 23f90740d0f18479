"""Losses on logits beyond the instance-level KL: MLKD's class- and batch-level correlation
losses, and TTM's and WTTM's transformed-teacher matching.

Each function returns, for the same inputs, what the reference code returns (same operations in
the same order), and accepts a tensor temperature (CTKD's learned one) where it takes one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["batch_correlation", "class_correlation", "transformed_teacher_matching",
           "weighted_transformed_teacher_matching"]


def class_correlation(student_logits: Tensor, teacher_logits: Tensor,
                      temperature: float | Tensor) -> Tensor:
    """MLKD's class-level alignment (Jin, Wang & Lin, "Multi-Level Logit Distillation",
    CVPR 2023; Jin-Ying/Multi-Level-Logit-Distillation ``mdistiller/distillers/KD_ours.py``
    ``cc_loss``): with P = softmax(z / T) of shape (B, C), the squared Frobenius distance
    between the class-correlation Gram matrices P^T P of teacher and student, divided by the
    number of classes C: ||P_t^T P_t - P_s^T P_s||^2 / C. No T^2 factor."""
    num_classes = teacher_logits.shape[1]
    p_student = F.softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)
    gram_student = torch.mm(p_student.transpose(1, 0), p_student)
    gram_teacher = torch.mm(p_teacher.transpose(1, 0), p_teacher)
    return ((gram_teacher - gram_student) ** 2).sum() / num_classes


def batch_correlation(student_logits: Tensor, teacher_logits: Tensor,
                      temperature: float | Tensor) -> Tensor:
    """MLKD's batch-level alignment (``bc_loss`` in the same file): with P = softmax(z / T) of
    shape (B, C), ||P_t P_t^T - P_s P_s^T||^2 / B, the (B x B) Gram matrices of the samples'
    predictions. No T^2 factor."""
    batch = teacher_logits.shape[0]
    p_student = F.softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)
    gram_student = torch.mm(p_student, p_student.transpose(1, 0))
    gram_teacher = torch.mm(p_teacher, p_teacher.transpose(1, 0))
    return ((gram_teacher - gram_student) ** 2).sum() / batch


def _power_transformed(teacher_logits: Tensor, exponent: float | Tensor) -> tuple[Tensor, Tensor]:
    """softmax(z_t)^l normalised to sum 1, and the normaliser sum_k softmax(z_t)_k^l (B,)."""
    powered = torch.pow(torch.softmax(teacher_logits, dim=1), exponent)
    norm = torch.sum(powered, dim=1)
    return powered / norm.unsqueeze(1), norm


def transformed_teacher_matching(student_logits: Tensor, teacher_logits: Tensor,
                                 exponent: float | Tensor) -> Tensor:
    """Transformed teacher matching (Zheng & Yang, "Knowledge Distillation Based on Transformed
    Teacher Matching", ICLR 2024; zkxufo/TTM ``distiller_zoo/ttm.py``): the KL divergence from
    the power-transformed teacher q = p_t^l / sum_k p_t,k^l (p_t = softmax(z_t); l = 1/T) to the
    *untempered* student softmax(z_s), summed over classes and averaged over the batch. No T^2
    factor."""
    target, _ = _power_transformed(teacher_logits, exponent)
    log_p_student = F.log_softmax(student_logits, dim=1)
    kl = torch.sum(F.kl_div(log_p_student, target, reduction="none"), dim=1)
    return torch.mean(kl)


def weighted_transformed_teacher_matching(student_logits: Tensor, teacher_logits: Tensor,
                                          exponent: float | Tensor) -> Tensor:
    """Weighted TTM (same paper; zkxufo/TTM ``distiller_zoo/wttm.py``): each sample's TTM
    divergence weighted by the power sum U_l(p_t) = sum_k p_t,k^l of its teacher prediction (the
    smoother the teacher, the larger the weight), averaged over the batch:
    mean_b [U_l(p_t,b) * KL(q_b || softmax(z_s,b))]. The weight is not detached, as in the
    reference (it depends on the teacher only)."""
    target, norm = _power_transformed(teacher_logits, exponent)
    log_p_student = F.log_softmax(student_logits, dim=1)
    kl = torch.sum(F.kl_div(log_p_student, target, reduction="none"), dim=1)
    return torch.mean(norm * kl)
