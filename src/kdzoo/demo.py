"""``kdzoo demo``: the whole idea of distillation in a minute, on data that ships with
scikit-learn. A resnet20 teacher is trained on the 8x8 digits, then two resnet8 students start
from the same initial weights: one learns from the labels alone (baseline), one is also taught by
the teacher's soft targets (st). The three run folders stay on disk."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .config import resolve_config
from .engine import fit

log = logging.getLogger("kdzoo")

TEACHER, STUDENT = "resnet20", "resnet8"
EPOCHS = 40
RECIPE = {"epochs": EPOCHS, "batch_size": 64, "lr": 0.1, "weight_decay": 5e-4,
          "schedule": "cosine", "nesterov": True}


def fresh_folder(path: str | Path) -> Path:
    """``path``, or ``path-2``, ``path-3`` ... if it is taken: the demo never overwrites."""
    base = Path(path)
    candidate, index = base, 2
    while candidate.exists():
        candidate, index = base.with_name(f"{base.name}-{index}"), index + 1
    return candidate


def results_table(rows: list[dict[str, Any]]) -> str:
    header = "| run | model | best test top-1 (epoch) | last test top-1 | epochs | wall time |"
    lines = [header, "|---|---|---|---|---|---|"]
    for row in rows:
        s = row["summary"]
        lines.append(f"| {row['label']} | {row['model']} | {s['best_top1']:.2f}% "
                     f"({s['best_top1_epoch']}) | {s['last_top1']:.2f}% | {s['epochs']} | "
                     f"{s['wall_seconds']:.1f}s |")
    return "\n".join(lines)


def run_demo(out: str | Path = "runs/demo", epochs: int | None = None, seed: int = 0,
             progress: bool | None = None) -> str:
    """Train the teacher and both students under a fresh folder; returns the results table."""
    root = fresh_folder(out)
    recipe = {**RECIPE, "epochs": epochs or EPOCHS}
    common = {"data": {"name": "digits"}, "optim": recipe, "seed": seed}

    def train(label: str, run: dict[str, Any]) -> dict[str, Any]:
        log.info("== %s ==", label)
        config = resolve_config(overrides={**common, **run, "out": str(root / label)})
        return fit(config, progress=progress).summary

    teacher = train("teacher", {"method": {"name": "baseline"}, "student": {"name": TEACHER}})
    teacher_file = str(root / "teacher" / "student.pt")
    distil = {"teacher": {"name": TEACHER, "checkpoint": teacher_file}}
    rows = [{"label": "teacher (baseline)", "model": TEACHER, "summary": teacher}]
    for method in ("baseline", "st"):
        student = {"name": STUDENT}
        summary = train(method, {"method": {"name": method}, "student": student,
                                 **(distil if method != "baseline" else {})})
        rows.append({"label": f"student, {method}", "model": STUDENT, "summary": summary})
    table = results_table(rows)
    print(f"\nkdzoo demo on scikit-learn digits (runs in {root}):\n")
    print(table)
    return table
