"""LwM: distilling Grad-CAM attention maps of the middle stage."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from .. import functional as KF
from ..models.features import FeatureRequest, Features
from ._input_grad import true_class_grad
from .base import Method, MethodParams, Step
from .registry import register_method


@dataclass(frozen=True)
class LwMParams(MethodParams):
    weight: float = 0.4
    grad_cam: bool = False


@register_method("lwm")
class LearningWithoutMemorizing(Method[LwMParams]):
    """LwM's attention distillation: "Learning without Memorizing", Dhar, Singh, Peng, Wu &
    Chellappa, CVPR 2019.

    Reference zoo behaviour (AberHu/Knowledge-Distillation-Zoo@65470c8: kd_losses/lwm.py): for
    each network, g = d(sum_b z_{b,y_b})/dA with A the post-ReLU output of stage 2 (``stage2``;
    the reference README explains why not stage 3: there the map would be constant over H and
    W), the student's with ``create_graph=True``, the teacher's detached.
    cam = ReLU(sum_c GAP(g)_c * g_c), flattened to (B, H*W) and L2-normalised;
    L = mean |cam_s - cam_t| (``F.l1_loss``). weight = 0.4 (reference example).

    Differences from the paper: LwM is an incremental-learning method whose loss also has
    classification and distillation terms; like the reference, only the attention term is kept.
    The reference's map is gradient x gradient (a quirk of the reference's kd_losses/lwm.py, the
    default here); ``grad_cam=True`` uses the paper's Grad-CAM, GAP(g)-weighted activations sum_c
    GAP(g)_c * A_c.
    The maps are summed over channels, so teacher and student may differ in width without a
    connector; where their spatial sizes differ (other architectures), the larger map and its
    gradient are average-pooled to the smaller size first (the reference has equal sizes only).
    The images require grad (as in the reference) because the frozen teacher's feature map has
    no graph otherwise. The map is the middle stage of a three-stage network: the second-to-last
    stage of any network.
    """

    paper = "Learning without Memorizing, Dhar et al., CVPR 2019"
    url = "https://arxiv.org/abs/1811.08051"
    needs = FeatureRequest(stages=(-2,))  # the middle stage of a three-stage network
    needs_input_grad = True

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        labels, grad_cam = step.batch.labels, self.params.grad_cam
        ((s_map, t_map),) = self.stage_pairs(features)
        student_grad = true_class_grad(features["student"].logits, labels, s_map,
                                       create_graph=True)
        teacher_grad = true_class_grad(features["teacher"].logits, labels, t_map,
                                       create_graph=False)
        # Networks of other resolutions: the larger map and its gradient are pooled to the
        # smaller's size before the attention maps are formed.
        student_grad, teacher_grad = KF.match_spatial_size(student_grad, teacher_grad)
        s_map, t_map = KF.match_spatial_size(s_map, t_map)
        loss = KF.lwm_attention_loss(
            student_grad, teacher_grad.detach(),
            s_map if grad_cam else None,
            t_map.detach() if grad_cam else None,
        )
        return {"lwm": self.params.weight * loss}
