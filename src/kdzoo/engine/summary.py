"""summary.json: the numbers a results table needs, from a run's metrics history.

The "best" epoch is chosen on the validation split when the run has one (``--val-split``): then
``best_top1`` is the test top-1 *at the epoch best on validation* (``selection: "val"``), an
honest number. Without a validation split it is the best test top-1 over the epochs
(``selection: "test"``), as the other zoos report it. ``last_top1`` is the last epoch's either way.
"""
from __future__ import annotations

import platform
from typing import TYPE_CHECKING, Any

import torch

from ..models.features import count_parameters
from .records import METRICS_FORMAT

if TYPE_CHECKING:
    from .trainer import Trainer

SUMMARY_FORMAT = "kdzoo-summary/2"


def scores(history: list[dict[str, Any]], split: str,
           role: str = "student") -> list[tuple[int, dict[str, float]]]:
    """(epoch, ``{"top1", "top5", "loss"}``) of every evaluated epoch on ``split`` ("test" or
    "val") for ``role`` (a trained peer's come from the record's ``peers``)."""
    found = []
    for record in history:
        group = record if role == "student" else record.get("peers", {}).get(role, {})
        if split in group:
            found.append((record["epoch"], group[split]))
    return found


def select_best(history: list[dict[str, Any]], role: str = "student") -> dict[str, Any]:
    """The best epoch (the first reaching the maximum, as the reference's "strictly improves"
    rule), chosen on validation when there is one, and the test scores at it."""
    test = dict(scores(history, "test", role))
    val = dict(scores(history, "val", role))
    chooser, selection = (val, "val") if val else (test, "test")
    if not chooser:
        return {"selection": selection, "best_epoch": None, "best": {}, "best_val": None}
    epoch = max(chooser, key=lambda e: (chooser[e]["top1"], -e))
    return {"selection": selection, "best_epoch": epoch, "best": test.get(epoch, {}),
            "best_val": val[epoch]["top1"] if val else None}


def make_summary(trainer: "Trainer", wall_seconds: float, finished: bool) -> dict[str, Any]:
    from .. import __version__

    parts, history = trainer.parts, trainer.history
    config = parts.config
    last_epoch, last = (scores(history, "test") or [(None, {})])[-1]
    best = select_best(history)
    val = scores(history, "val")
    teacher = trainer.teacher_eval or {}
    peers: dict[str, Any] = {}
    for role in parts.method.trainable_roles():
        if role.name == "student":
            continue
        peer_best = select_best(history, role.name)
        peer_last = (scores(history, "test", role.name) or [(None, {})])[-1][1]
        peers.update({role.name: getattr(config, role.source).name,
                      f"{role.prefix}best_top1": peer_best["best"].get("top1"),
                      f"{role.prefix}best_top1_epoch": peer_best["best_epoch"],
                      f"{role.prefix}last_top1": peer_last.get("top1"),
                      f"{role.prefix}last_top5": peer_last.get("top5")})
    return {
        "format": SUMMARY_FORMAT,
        "metrics_format": METRICS_FORMAT,
        "method": config.method.name,
        "student": config.student.name,
        "teacher": config.teacher.name if parts.teacher is not None else None,
        "data": config.data.name,
        "seed": config.seed,
        "hyperparameters": dict(config.method.params),
        "recipes": list(config.recipes),
        "finished": finished,
        "epochs": trainer.global_epoch,
        "selection": best["selection"],
        "val_split": config.data.val_split,
        "best_top1": best["best"].get("top1"),
        "best_top5": best["best"].get("top5"),
        "best_top1_epoch": best["best_epoch"],
        "best_val_top1": best["best_val"],
        "last_top1": last.get("top1"),
        "last_top5": last.get("top5"),
        "last_val_top1": val[-1][1]["top1"] if val else None,
        "last_epoch": last_epoch,
        "teacher_top1": teacher.get("top1"),
        "teacher_top5": teacher.get("top5"),
        "teacher_untrained": "teacher" in parts.calibrated,
        **peers,
        "student_parameters": count_parameters(parts.method.deployed("student", parts.student)),
        "method_parameters": count_parameters(parts.method),
        "wall_seconds": wall_seconds,
        "train_seconds": sum(r["time"]["train_seconds"] for r in history),
        "device": str(parts.device),
        "world_size": parts.dist.world,  # processes (torchrun) that trained it together
        "versions": {"kdzoo": __version__, "torch": torch.__version__,
                     "python": platform.python_version()},
    }
