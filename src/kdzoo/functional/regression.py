"""Losses of the methods that regress teacher features through learned modules: FT (factor
transfer), VID (variational information distillation), OFD (overhaul of feature distillation) and
AFD (attentive feature distillation).

The learned parts (paraphraser/translator, regressors, connectors, attention) live in the method
classes; these functions are the math that follows them, for one stage, exactly as the reference
Knowledge-Distillation-Zoo computes it (AberHu/Knowledge-Distillation-Zoo@65470c8: kd_losses/).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "attention_feature_distillation",
    "factor_transfer",
    "ofd_margin_from_batch",
    "ofd_margin_from_bn",
    "overhaul_distillation",
    "variational_information_loss",
]


def factor_transfer(student_factor: Tensor, teacher_factor: Tensor) -> Tensor:
    """Factor transfer (Kim, Park & Kwak, "Paraphrasing Complex Network: Network Compression via
    Factor Transfer", NeurIPS 2018), as the reference zoo's ``FT``:

    ``phi(z) = z.view(B, -1) / max(||z.view(B, -1)||_2, 1e-12)`` (``F.normalize``) and
    ``L = mean_{b,d} |phi(z_s) - phi(z_t)|`` (``F.l1_loss``, p = 1 as in the paper).

    ``student_factor`` is the translator's output, ``teacher_factor`` the paraphraser's factor
    (both (B, C, H, W) of equal shape).
    """
    batch = student_factor.shape[0]
    # flatten, not view: features may be channels_last (view would fail on them)
    phi_s = F.normalize(student_factor.reshape(batch, -1), p=2, dim=1, eps=1e-12)
    phi_t = F.normalize(teacher_factor.reshape(batch, -1), p=2, dim=1, eps=1e-12)
    return F.l1_loss(phi_s, phi_t)


def variational_information_loss(mean: Tensor, target: Tensor, variance: Tensor) -> Tensor:
    """Variational information distillation (Ahn, Hu, Damianou, Lawrence & Dai, "Variational
    Information Distillation for Knowledge Transfer", CVPR 2019): the negative log-likelihood of
    the teacher map under a Gaussian with the regressed mean and a per-channel variance, up to
    the constant ``0.5 log(2 pi)``, averaged over all elements as in the reference zoo's ``VID``:

    ``L = mean_{b,c,h,w} 0.5 * (log sigma^2_c + (mu_{b,c,h,w} - t_{b,c,h,w})^2 / sigma^2_c)``.

    ``mean`` and ``target`` are (B, C, H, W); ``variance`` holds sigma^2 per channel, shape (C,)
    (the method computes it as ``softplus(alpha) + 1e-6``).
    """
    variance = variance.reshape(1, -1, 1, 1) if variance.dim() == 1 else variance
    neg_log_prob = 0.5 * (torch.log(variance) + (mean - target).pow(2) / variance)
    return neg_log_prob.mean()


def ofd_margin_from_batch(teacher: Tensor, eps: float = 1e-6) -> Tensor:
    """The margin of OFD's teacher transform as the reference zoo computes it: per channel, the
    mean of the teacher's negative (pre-ReLU) responses in the current batch,

    ``m_c = sum_{b,h,w} t * [t < 0] / (sum_{b,h,w} [t < 0] + 1e-6)``  (0 for a channel with no
    negative response). Returns shape (C,).

    The paper and its official code derive the margin from the teacher's BatchNorm instead
    (:func:`ofd_margin_from_bn`).
    """
    negative = (teacher < 0).to(teacher.dtype)
    dims = [d for d in range(teacher.dim()) if d != 1]
    return (teacher * negative).sum(dim=dims) / (negative.sum(dim=dims) + eps)


def ofd_margin_from_bn(bn_weight: Tensor, bn_bias: Tensor) -> Tensor:
    """The margin of OFD's teacher transform as in the paper (Heo, Kim, Yun, Park, Kwak & Choi,
    "A Comprehensive Overhaul of Feature Distillation", ICCV 2019, eq. 3) and the official code's
    ``get_margin_from_BN``: if a channel's pre-ReLU response is Gaussian with mean ``b = bias``
    and standard deviation ``s = |weight|`` of the BatchNorm that produced it, the margin is the
    expectation of its negative part,

    ``m = b - s * exp(-(b/s)^2 / 2) / sqrt(2 pi) / Phi(-b/s)``  if ``Phi(-b/s) > 0.001``,
    ``m = -3 s`` otherwise (the official code's guard against a vanishing denominator).

    Returns shape (C,) in the dtype of ``bn_weight``. ``s`` is clamped to the smallest positive
    normal number so that a zero BN weight gives a finite margin (the official code divides by
    zero there).
    """
    std = bn_weight.abs().clamp_min(torch.finfo(bn_weight.dtype).tiny)
    mean = bn_bias.to(bn_weight.dtype)
    ratio = mean / std
    cdf = torch.special.ndtr(-ratio)
    gaussian = -std * torch.exp(-0.5 * ratio.pow(2)) / math.sqrt(2 * math.pi) / cdf + mean
    return torch.where(cdf > 0.001, gaussian, -3.0 * std)


def overhaul_distillation(student: Tensor, teacher: Tensor, margin: Tensor) -> Tensor:
    """OFD's distance (Heo et al., ICCV 2019) as the reference zoo's ``OFD``: the teacher's
    pre-ReLU map goes through the margin ReLU ``t' = max(t, m_c)``, and the partial L2 distance
    skips positions where the student is already below a non-positive target:

    ``mask = 1 - [s <= t' and t' <= 0]`` and ``L = mean_{b,c,h,w} (s - t')^2 * mask``.

    ``student`` is the connector's output (B, C, H, W); ``margin`` has shape (C,). The mask is the
    official one written differently (official keeps ``s > t' or t' > 0``). Reference vs paper:
    the paper (and official code) sums the masked squared error and divides by the batch size;
    the reference zoo averages over all elements.
    """
    margin = margin.reshape(1, -1, 1, 1) if margin.dim() == 1 else margin
    target = torch.maximum(teacher, margin.to(teacher.dtype))
    mask = 1.0 - ((student <= target) & (target <= 0.0)).to(student.dtype)
    return ((student - target).pow(2) * mask).mean()


def attention_feature_distillation(student: Tensor, teacher: Tensor,
                                   channel_weights: Tensor, eps: float = 1e-6) -> Tensor:
    """Attentive feature distillation, the reference zoo's SE-block variant of "Pay Attention to
    Features, Transfer Learn Faster CNNs" (Wang, Chen, Xu, Wang & Zhou, ICLR 2020): both maps are
    normalised per channel over space, ``x~_{b,c} = x_{b,c} / (||x_{b,c}||_2 + 1e-6)``, and

    ``L = mean_b sum_c rho_{b,c} * mean_{h,w} (s~ - t~)^2``.

    ``channel_weights`` (rho) is (B, C), each row summing to 1 (the method's attention module
    produces it from the teacher map).
    """
    def normalised(x: Tensor) -> Tensor:
        return x / (torch.linalg.vector_norm(x, dim=(2, 3), keepdim=True) + eps)

    per_channel = (normalised(student) - normalised(teacher)).pow(2).mean(dim=(2, 3))
    return (channel_weights * per_channel).sum(dim=1).mean()
