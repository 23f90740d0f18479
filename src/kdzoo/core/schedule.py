"""Learning-rate schedules, set once at the start of every epoch as the reference zoo does."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from ..config import OptimConfig


class LRSchedule(Protocol):
    def lr(self, epoch: int) -> float:
        """Learning rate of ``epoch`` (1-based, within its stage)."""


@dataclass(frozen=True)
class MultiStep:
    """``base_lr * gamma**k`` where k counts the milestones the epoch has passed: with
    milestones (100, 150), epochs 1-100 use base_lr and 101-150 use base_lr * gamma."""

    base_lr: float
    milestones: tuple[int, ...]
    gamma: float = 0.1

    def lr(self, epoch: int) -> float:
        return self.base_lr * self.gamma ** sum(epoch > m for m in self.milestones)


@dataclass(frozen=True)
class Cosine:
    """Cosine annealing from ``base_lr`` (epoch 1) towards ``min_lr`` over ``epochs``."""

    base_lr: float
    epochs: int
    min_lr: float = 0.0

    def lr(self, epoch: int) -> float:
        progress = (epoch - 1) / max(1, self.epochs)
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class Piecewise:
    """Constant segments ``((epochs, lr), ...)``: FSP's and AB's initialisation stage uses
    ((30, 0.01), (10, 0.001), (10, 0.0001))."""

    segments: tuple[tuple[int, float], ...]

    def lr(self, epoch: int) -> float:
        end = 0
        for length, value in self.segments:
            end += length
            if epoch <= end:
                return value
        return self.segments[-1][1]


def absolute_milestones(milestones: list[float], epochs: int) -> tuple[int, ...]:
    """Milestones below 1 are fractions of ``epochs`` (rounded up, so even a 1-epoch run starts
    at the full learning rate); others are epoch numbers."""
    return tuple(max(1, math.ceil(m * epochs - 1e-9)) if 0 < m < 1 else int(m)
                 for m in milestones)


def build_schedule(optim: OptimConfig) -> LRSchedule:
    """The schedule ``optim`` names (its values are checked when the spec is built)."""
    if optim.schedule == "cosine":
        return Cosine(optim.lr, optim.epochs)
    if optim.schedule == "constant":
        return MultiStep(optim.lr, ())
    return MultiStep(optim.lr, absolute_milestones(list(optim.milestones), optim.epochs),
                     optim.gamma)
