"""mdistiller's linear warm-up of the distillation terms, shared by DKD, RLD and SDD."""
from __future__ import annotations

from ..errors import ConfigError


def warmup_factor(epoch: int, warmup: int) -> float:
    """mdistiller's linear warm-up of the distillation terms, ``min(epoch / warmup, 1)`` for the
    1-based ``epoch``; ``warmup`` 0 switches it off (factor 1 from the first epoch)."""
    return 1.0 if warmup == 0 else min(epoch / warmup, 1.0)


def check_warmup(method: str, warmup: int) -> None:
    """One line for a warm-up that is not a number of epochs >= 0."""
    if warmup < 0:
        raise ConfigError(f"method {method}: warmup must be a number of epochs >= 0 "
                          f"(0: no warm-up), got {warmup}")
