"""summary.json: the numbers a results table needs, from a run's metrics history."""
from __future__ import annotations

import platform
from typing import TYPE_CHECKING, Any

import torch

from ..models.features import count_parameters

if TYPE_CHECKING:
    from .trainer import Trainer


def _best(history: list[dict[str, Any]], key: str) -> tuple[float | None, int | None]:
    scored = [r for r in history if key in r]
    if not scored:
        return None, None
    # The first epoch reaching the maximum, as the reference's "strictly improves" rule.
    best = max(scored, key=lambda r: (r[key], -r["epoch"]))
    return best[key], best["epoch"]


def make_summary(trainer: "Trainer", wall_seconds: float, finished: bool) -> dict[str, Any]:
    from .. import __version__

    parts, history = trainer.parts, trainer.history
    config = parts.config
    evaluated = [r for r in history if "test_top1" in r]
    last = evaluated[-1] if evaluated else {}
    best_top1, best_top1_epoch = _best(history, "test_top1")
    best_top5, best_top5_epoch = _best(history, "test_top5")
    teacher = trainer.teacher_eval or {}
    peers: dict[str, Any] = {}
    for role in parts.method.trainable_roles():
        if role.name == "student":
            continue
        best, best_epoch = _best(history, f"{role.prefix}test_top1")
        peers.update({role.name: getattr(config, role.source).name,
                      f"{role.prefix}best_top1": best, f"{role.prefix}best_top1_epoch": best_epoch,
                      f"{role.prefix}last_top1": last.get(f"{role.prefix}test_top1"),
                      f"{role.prefix}last_top5": last.get(f"{role.prefix}test_top5")})
    return {
        "method": config.method.name,
        "student": config.student.name,
        "teacher": config.teacher.name if parts.teacher is not None else None,
        "data": config.data.name,
        "seed": config.seed,
        "hyperparameters": dict(config.method.params),
        "finished": finished,
        "epochs": trainer.global_epoch,
        "best_top1": best_top1,
        "best_top1_epoch": best_top1_epoch,
        "best_top5": best_top5,
        "best_top5_epoch": best_top5_epoch,
        "last_top1": last.get("test_top1"),
        "last_top5": last.get("test_top5"),
        "last_epoch": last.get("epoch"),
        "teacher_top1": teacher.get("top1"),
        "teacher_top5": teacher.get("top5"),
        "teacher_untrained": "teacher" in parts.calibrated,
        **peers,
        "student_parameters": count_parameters(parts.student),
        "method_parameters": count_parameters(parts.method),
        "wall_seconds": wall_seconds,
        "train_seconds": sum(r["train_seconds"] for r in history),
        "device": str(parts.device),
        "versions": {"kdzoo": __version__, "torch": torch.__version__,
                     "python": platform.python_version()},
    }
