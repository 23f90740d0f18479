"""Losses on logits: regression, soft targets, mutual learning."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["logits_mse", "soft_target"]


def logits_mse(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Regressing logits (Ba & Caruana, "Do Deep Nets Really Need to be Deep?", NIPS 2014):
    mean over batch and classes of (z_s - z_t)^2."""
    return F.mse_loss(student_logits, teacher_logits)


def soft_target(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Soft targets (Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network",
    NIPS Deep Learning Workshop 2014): T^2 * KL(softmax(z_t/T) || softmax(z_s/T)), summed over
    classes and averaged over the batch ('batchmean'), as the reference zoo's ``SoftTarget``."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_p_student, p_teacher, reduction="batchmean")
    return kl * (temperature * temperature)
