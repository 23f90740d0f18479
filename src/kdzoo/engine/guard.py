"""The non-finite guard: a NaN or inf in a loss term or a gradient stops the run (keeping the
last good checkpoint) or, with ``nonfinite: skip``, skips that batch and counts it.

Checking a value on the host costs a device synchronisation. On the CPU that is free, so every
step is checked before the optimiser steps. On a GPU in "stop" mode the per-step flags stay on
the device and are read at log intervals and at the end of the epoch (the run stops there, and
the weights of that epoch are never checkpointed); "skip" mode must decide before each step, so
it reads every step.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

from ..errors import KdzooError


class NonFiniteError(KdzooError):
    """A NaN/inf appeared during training; the last good checkpoint is intact."""

    exit_status = 1


def gradients_finite(params: Iterable[torch.nn.Parameter]) -> Tensor:
    """A 0-dim bool tensor: are all gradients finite? (one fused norm per parameter list)"""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.ones((), dtype=torch.bool)
    norms = torch._foreach_norm(grads)  # the same primitive clip_grad_norm_ uses
    return torch.isfinite(torch.stack(norms)).all()


class NonFiniteGuard:
    def __init__(self, mode: str, device: torch.device) -> None:
        self.mode = mode
        self.read_every_step = mode == "skip" or device.type == "cpu"
        self.pending: list[tuple[int, list[str], Tensor]] = []
        self.skipped = 0

    def check(self, epoch: int, step: int, terms: dict[str, Tensor],
              params: Iterable[torch.nn.Parameter]) -> bool:
        """After backward: True if this step may update the weights."""
        names = [*terms, "gradient"]
        flags = torch.stack([*(torch.isfinite(v.detach()).all() for v in terms.values()),
                             gradients_finite(params).to(next(iter(terms.values())).device)])
        if not self.read_every_step:
            self.pending.append((step, names, flags))
            return True
        if bool(flags.all()):
            return True
        if self.mode == "skip":
            self.skipped += 1
            return False
        self._raise(epoch, step, names, flags)
        return False  # unreachable

    def flush(self, epoch: int) -> None:
        """Read the deferred flags (GPU, stop mode); raises on the first bad step."""
        pending, self.pending = self.pending, []
        if not pending:
            return
        all_flags = torch.stack([flags for _, _, flags in pending]).cpu()
        for (step, names, _), flags in zip(pending, all_flags):
            if not bool(flags.all()):
                self._raise(epoch, step, names, flags)

    @staticmethod
    def _raise(epoch: int, step: int, names: list[str], flags: Tensor) -> None:
        bad = names[int((~flags.cpu()).nonzero()[0])]
        what = "the gradients" if bad == "gradient" else f"loss term '{bad}'"
        raise NonFiniteError(
            f"{what} became NaN or infinite at epoch {epoch}, step {step}; the run stopped and "
            "its last good checkpoint is kept: lower the learning rate or the method's weight "
            "and rerun with --resume, or --set nonfinite=skip to skip such batches"
        )
