"""LwM: distilling Grad-CAM attention maps of the middle stage."""
from __future__ import annotations

from torch import Tensor

from .. import functional as KF
from ..models.features import Feats
from ._input_grad import true_class_grad
from .base import Method, MethodContext, Step
from .registry import register_method


@register_method("lwm")
class LearningWithoutMemorizing(Method):
    """LwM's attention distillation: "Learning without Memorizing", Dhar, Singh, Peng, Wu &
    Chellappa, CVPR 2019.

    Reference zoo behaviour (kd_losses/lwm.py): for each network, g = d(sum_b z_{b,y_b})/dA with A
    the post-ReLU output of stage 2 (``stage2``; the reference README explains why not stage 3:
    there the map would be constant over H and W), the student's with ``create_graph=True``, the
    teacher's detached. cam = ReLU(sum_c GAP(g)_c * g_c), flattened to (B, H*W) and L2-normalised;
    L = mean |cam_s - cam_t| (``F.l1_loss``). weight = 0.4 (reference example).

    Differences from the paper: LwM is an incremental-learning method whose loss also has
    classification and distillation terms; like the reference, only the attention term is kept.
    The reference's map is gradient x gradient (seed-zoo quirk 6b.6, the default here);
    ``grad_cam=True`` uses the paper's Grad-CAM, GAP(g)-weighted activations sum_c GAP(g)_c * A_c.
    The maps are summed over channels, so teacher and student may differ in width without a
    connector; they must have the same spatial size. The images require grad (as in the
    reference) because the frozen teacher's feature map has no graph otherwise.
    """

    paper = "Learning without Memorizing, Dhar et al., CVPR 2019"
    url = "https://arxiv.org/abs/1811.08051"
    points = ("stage2",)
    needs_input_grad = True

    def __init__(self, ctx: MethodContext, weight: float = 0.4, grad_cam: bool = False) -> None:
        super().__init__(ctx)
        self.weight = weight
        self.grad_cam = grad_cam

    def forward(self, student: Feats, teacher: Feats | None, step: Step) -> dict[str, Tensor]:
        assert teacher is not None
        labels = step.batch.labels
        s_map, t_map = student["stage2"], teacher["stage2"]
        student_grad = true_class_grad(student["logits"], labels, s_map, create_graph=True)
        teacher_grad = true_class_grad(teacher["logits"], labels, t_map, create_graph=False)
        loss = KF.lwm_attention_loss(
            student_grad, teacher_grad.detach(),
            s_map if self.grad_cam else None,
            t_map.detach() if self.grad_cam else None,
        )
        return {"lwm": self.weight * loss}
