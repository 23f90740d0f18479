"""summary.json: the numbers a results table needs, a pure function of the run's spec, its
metrics history and a few facts fixed when the run starts (:class:`RunFacts`).

The "best" epoch is chosen on the validation split when the run has one (``--val-split``): then
``best_top1`` is the test top-1 *at the epoch best on validation* (``selection: "val"``), an
honest number. Without a validation split it is the best test top-1 over the epochs
(``selection: "test"``), as the other zoos report it. ``last_top1`` is the last epoch's either way.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import TrainConfig
from ..version import __version__
from .records import METRICS_FORMAT

SUMMARY_FORMAT = "kdzoo-summary/2"


@dataclass(frozen=True)
class RunFacts:
    """What a summary says beyond the spec and the metrics: fixed once the run is built and the
    teacher checked."""

    teacher: str | None            # the frozen teacher's model (None: the method has none)
    #: its top-1/top-5, checked before distilling: on the test split, or on the validation
    #: split when the run never reads the test split (``evaluate_test=False``)
    teacher_eval: dict[str, float] | None
    teacher_untrained: bool        # it had no checkpoint (BatchNorms calibrated)
    peers: dict[str, str] = field(default_factory=dict)  # trained peer role -> its model
    student_parameters: int = 0
    method_parameters: int = 0
    device: str = "cpu"
    world_size: int = 1            # processes (torchrun) that trained it together


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


def _peer_fields(history: list[dict[str, Any]], peers: dict[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for role, model in peers.items():
        best = select_best(history, role)
        last = (scores(history, "test", role) or [(None, {})])[-1][1]
        found.update({role: model, f"{role}_best_top1": best["best"].get("top1"),
                      f"{role}_best_top1_epoch": best["best_epoch"],
                      f"{role}_last_top1": last.get("top1"), f"{role}_last_top5": last.get("top5")})
    return found


def make_summary(config: TrainConfig, history: list[dict[str, Any]], facts: RunFacts,
                 wall_seconds: float, finished: bool) -> dict[str, Any]:
    """The summary of a run with spec ``config`` after the epochs of ``history``."""
    last_epoch, last = (scores(history, "test") or [(None, {})])[-1]
    best = select_best(history)
    val = scores(history, "val")
    teacher = facts.teacher_eval or {}
    teacher_test, teacher_val = (teacher, {}) if config.evaluate_test else ({}, teacher)
    return {
        "format": SUMMARY_FORMAT,
        "metrics_format": METRICS_FORMAT,
        "method": config.method.name,
        "student": config.student.name,
        "teacher": facts.teacher,
        "data": config.data.name,
        "seed": config.seed,
        "hyperparameters": config.method.params.to_dict(),
        "recipes": list(config.recipes),
        "tuned": config.tuned,  # the study that chose the settings (kdzoo tune), or None
        "finished": finished,
        "epochs": len(history),
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
        "teacher_top1": teacher_test.get("top1"),
        "teacher_top5": teacher_test.get("top5"),
        "teacher_val_top1": teacher_val.get("top1"),  # only when the test split is never read
        "teacher_untrained": facts.teacher_untrained,
        **_peer_fields(history, facts.peers),
        "student_parameters": facts.student_parameters,
        "method_parameters": facts.method_parameters,
        "wall_seconds": wall_seconds,
        "train_seconds": sum(r["time"]["train_seconds"] for r in history),
        "device": facts.device,
        "world_size": facts.world_size,
        "precision": config.precision,
        "versions": {"kdzoo": __version__, "torch": torch.__version__,
                     "python": platform.python_version()},
    }
