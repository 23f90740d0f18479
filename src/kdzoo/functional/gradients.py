"""Losses on gradients: Sobolev / Jacobian matching and LwM's Grad-CAM attention.

These functions receive gradients that the methods computed (``torch.autograd.grad`` with
``create_graph=True`` for the student); they only do the math on them, so they stay pure and can
be checked against hand computations like every other loss.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["lwm_attention", "lwm_attention_loss", "sobolev_matching"]


def sobolev_matching(student_input_grad: Tensor, teacher_input_grad: Tensor) -> Tensor:
    """Sobolev training / Jacobian matching (Czarnecki et al., "Sobolev Training for Neural
    Networks", NIPS 2017; Srinivas & Fleuret, "Knowledge Transfer with Jacobian Matching",
    ICML 2018), as the reference zoo's ``Sobolev``.

    With g_n = d(sum_b z^n_{b,y_b})/d(image) of shape (B, C, H, W) for each network,
    g^_n = g_n / max(||g_n||_2, 1e-12) per sample over C*H*W (``F.normalize``), and
    L = mean over B*C*H*W of (g^_s - g^_t)^2 (``F.mse_loss``).
    """
    norm_student = F.normalize(student_input_grad.flatten(1), p=2, dim=1)
    norm_teacher = F.normalize(teacher_input_grad.flatten(1), p=2, dim=1)
    return F.mse_loss(norm_student, norm_teacher)


def lwm_attention(feature_grad: Tensor, feature: Tensor | None = None) -> Tensor:
    """The attention map of LwM ("Learning without Memorizing", Dhar et al., CVPR 2019), flattened
    to (B, H*W) and L2-normalised per sample.

    With g = d(sum_b z_{b,y_b})/dA of shape (B, C, H, W) and w_c = GAP(g)_c = mean_{h,w} g_c:

    * ``feature=None`` (reference zoo, kd_losses/lwm.py): cam = ReLU(sum_c w_c * g_c), i.e.
      gradient times gradient (a quirk of the reference's kd_losses/lwm.py);
    * ``feature=A`` (Grad-CAM as in the paper): cam = ReLU(sum_c w_c * A_c).

    Then cam^ = cam / max(||cam||_2, 1e-12) over the H*W positions of each sample.
    """
    weights = feature_grad.mean(dim=(2, 3), keepdim=True)
    maps = feature_grad if feature is None else feature
    cam = F.relu((weights * maps).sum(dim=1))
    return F.normalize(cam.flatten(1), p=2, dim=1)


def lwm_attention_loss(student_feature_grad: Tensor, teacher_feature_grad: Tensor,
                       student_feature: Tensor | None = None,
                       teacher_feature: Tensor | None = None) -> Tensor:
    """LwM's attention distillation loss: L = mean over B*H*W of |cam^_s - cam^_t|
    (``F.l1_loss``), with the maps of :func:`lwm_attention` (gradient x gradient by default as in
    the reference zoo; pass the features for the paper's Grad-CAM). Student and teacher may have
    different channel counts; their maps must have the same H and W."""
    if student_feature_grad.shape[2:] != teacher_feature_grad.shape[2:]:
        raise ValueError(
            f"LwM compares attention maps position by position: the student's map is "
            f"{tuple(student_feature_grad.shape[2:])} but the teacher's is "
            f"{tuple(teacher_feature_grad.shape[2:])}"
        )
    cam_student = lwm_attention(student_feature_grad, student_feature)
    cam_teacher = lwm_attention(teacher_feature_grad, teacher_feature)
    return F.l1_loss(cam_student, cam_teacher)

