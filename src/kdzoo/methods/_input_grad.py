"""Shared helper of the gradient-based methods (Sobolev, LwM): the gradient of each sample's
true-class logit, summed over the batch, with respect to an input or a feature map."""
from __future__ import annotations

import torch
from torch import Tensor


def true_class_grad(logits: Tensor, labels: Tensor, wrt: Tensor, create_graph: bool) -> Tensor:
    """d(sum_b z_{b,y_b}) / d(wrt), as the reference's ``grad(gather(out, 1, y), wrt,
    grad_outputs=ones)``. ``create_graph=True`` keeps the graph so a loss on the gradient can be
    backpropagated (the student); the teacher's gradient is a constant target and needs none."""
    if not wrt.requires_grad:
        raise RuntimeError(
            "this method differentiates the logits with respect to the input or a feature map, "
            "but that tensor does not require grad (the method must set needs_input_grad = True)"
        )
    selected = logits.gather(1, labels.view(-1, 1)).sum()
    (grad,) = torch.autograd.grad(selected, wrt, create_graph=create_graph,
                                  retain_graph=create_graph)
    return grad
