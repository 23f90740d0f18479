"""``kdzoo demo``: the whole idea of distillation in a minute, on data that ships with
scikit-learn. A resnet20 teacher is trained on the 8x8 digits, then two resnet8 students start
from the same initial weights: one learns from the labels alone (baseline), one is also taught by
the teacher's soft targets (st). It is a small grid, run by the same code as ``kdzoo zoo`` and
tabulated by ``kdzoo report``: a second ``kdzoo demo`` finds its runs finished and only prints
the table."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .report import collect, markdown, report_data
from .zoo import expand, run_grid

log = logging.getLogger("kdzoo")

TEACHER, STUDENT = "resnet20", "resnet8"
EPOCHS = 40
RECIPE = {"batch_size": 64, "lr": 0.1, "weight_decay": 5e-4, "schedule": "cosine",
          "nesterov": True}


def demo_grid(epochs: int, seed: int) -> dict[str, Any]:
    return {"data": "digits", "seeds": [seed], "methods": ["baseline", "st"],
            "pairs": [{"teacher": TEACHER, "student": STUDENT}], "teacher_seed": seed,
            "settings": {"optim": {**RECIPE, "epochs": epochs}}}


def run_demo(out: str | Path = "runs/demo", epochs: int | None = None, seed: int = 0) -> str:
    """Train the teacher and both students under ``out`` (finished runs are kept and reused);
    returns the results table."""
    grid = expand(demo_grid(epochs or EPOCHS, seed), out)
    outcomes = run_grid(grid)
    failed = [o for o in outcomes if not o.ok]
    if failed:
        raise RuntimeError(f"demo run {failed[0].run.name} failed: {failed[0].message}")
    table = markdown(report_data(collect([out])))
    print(f"\nkdzoo demo on scikit-learn digits (runs in {out}):\n")
    print(table)
    return table
