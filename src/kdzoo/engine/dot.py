"""DOT, the distillation-oriented trainer: SGD with separate momentum for the task and the
distillation gradients ("DOT: A Distillation-Oriented Trainer", Zhao, Song & Sun, ICCV 2023;
megvii-research/mdistiller ``mdistiller/engine/dot.py`` and ``trainer.py``'s ``DOT``).

Usable with any method (``--set optim.dot_delta=0.075``): the loss terms are split into the task
terms (every cross-entropy: ``ce``, ``peer_ce``) and the distillation terms (all the others);
the distillation gradients are taken first and kept (:meth:`DistillationOrientedSGD.step_kd`),
then the task gradients, and :meth:`DistillationOrientedSGD.step` applies both, each with its
own momentum buffer: task momentum ``momentum - delta``, distillation momentum
``momentum + delta`` (0.825 and 0.975 for mdistiller's momentum 0.9 and delta 0.075), exactly as
mdistiller's ``dot()`` does, including its rules for parameters that receive only one of the two
gradients (their buffer decays with the mean of the two momenta) and for weight decay (added to
the task gradient, or to the distillation gradient of a parameter without a task gradient).
As mdistiller's, it has one parameter group, no Nesterov and no loss scaling.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer


def is_task_term(name: str) -> bool:
    """The cross-entropy terms (``ce``, ``peer_ce``, ...) are DOT's task loss."""
    return name == "ce" or name.endswith("_ce")


class DistillationOrientedSGD(Optimizer):
    """mdistiller's ``DistillationOrientedTrainer`` (see the module docstring). Usage per step:
    ``zero_grad``; distillation loss ``.backward(retain_graph=True)``; ``step_kd()``;
    ``zero_grad``; task loss ``.backward()``; ``step()``."""

    def __init__(self, params: Iterable[Tensor], lr: float, momentum: float,
                 momentum_kd: float, weight_decay: float = 0.0, dampening: float = 0.0) -> None:
        defaults = dict(lr=lr, momentum=momentum, momentum_kd=momentum_kd,
                        weight_decay=weight_decay, dampening=dampening)
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("DOT is implemented for one parameter group, as mdistiller's")
        self._kd_grads: list[tuple[Tensor, Tensor]] = []

    @torch.no_grad()
    def step_kd(self, closure: Any = None) -> None:
        """Keep the distillation gradients (the parameters' current ``.grad``) for ``step``."""
        self._kd_grads = [(p, p.grad) for p in self.param_groups[0]["params"]
                          if p.grad is not None]

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        """Update every parameter with its task gradient, then with its kept distillation
        gradient, each through its own momentum buffer."""
        group = self.param_groups[0]
        lr, weight_decay, dampening = group["lr"], group["weight_decay"], group["dampening"]
        momentum, momentum_kd = group["momentum"], group["momentum_kd"]
        mean_momentum = (momentum + momentum_kd) / 2.0
        task = [p for p in group["params"] if p.grad is not None]
        task_ids = {id(p) for p in task}
        kd_ids = {id(p) for p, _ in self._kd_grads}
        for p in task:
            grad = p.grad.add(p, alpha=weight_decay) if weight_decay else p.grad
            state = self.state[p]
            buffer = state.get("momentum_buffer")
            if momentum != 0:
                if buffer is None:
                    buffer = grad.detach().clone()
                else:
                    decay = momentum if id(p) in kd_ids else mean_momentum
                    buffer.mul_(decay).add_(grad, alpha=1 - dampening)
                state["momentum_buffer"] = buffer
                grad = buffer
            p.add_(grad, alpha=-lr)
        for p, grad in self._kd_grads:
            state = self.state[p]
            buffer = state.get("momentum_kd_buffer")
            if buffer is None:
                buffer = grad.detach().clone()
            elif id(p) in task_ids:
                buffer.mul_(momentum_kd).add_(grad, alpha=1 - dampening)
            else:
                if weight_decay:
                    grad = grad.add(p, alpha=weight_decay)
                buffer.mul_(mean_momentum).add_(grad, alpha=1 - dampening)
            state["momentum_kd_buffer"] = buffer
            p.add_(buffer, alpha=-lr)
        self._kd_grads = []
