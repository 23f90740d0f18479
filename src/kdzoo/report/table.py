"""``kdzoo report``: one row per (method, teacher, student, data, settings), averaged over seeds.

Each row gives the number of seeds, mean ± sample standard deviation (n - 1) of the test top-1
at the best epoch and at the last epoch (both, labelled: "best on validation" when the runs hold
out a validation split and choose their best epoch on it, "best on test" otherwise, as the other
zoos report silently), the teacher's accuracy, the mean wall time, the settings that differ from
the row's siblings (a sweep's hyper-parameters), the difference to the baseline row of its
student and dataset, and, where the grid names one, the published number and the difference to
it (on the metric the publication reports: best or last epoch). Unfinished runs are listed
apart, never averaged in.
"""
from __future__ import annotations

import csv
import io
import json
from typing import Any

from .collect import Row, Run, baseline_of, group_rows, mean_std

#: The CSV's first columns, in this order.
CSV_COLUMNS = ["method", "teacher", "student", "data", "n", "best_top1_mean", "best_top1_std",
               "last_top1_mean", "last_top1_std", "teacher_top1", "wall_seconds_mean"]
BEST_LABELS = {"val": "test top-1 at the epoch best on validation",
               "test": "best test top-1 (best on test)",
               "mixed": "best test top-1 (selection differs between runs)"}


def row_numbers(row: Row, rows: list[Row]) -> dict[str, Any]:
    """Everything the table says of ``row``, as numbers."""
    best_mean, best_std = mean_std(row.values("best_top1"))
    last_mean, last_std = mean_std(row.values("last_top1"))
    val_mean, val_std = mean_std(row.values("best_val_top1"))
    teacher = row.values("teacher_top1")
    wall = row.values("wall_seconds")
    numbers: dict[str, Any] = {
        "method": row.shown, "teacher": row.teacher or "", "student": row.student,
        "data": row.data, "n": len(row.runs), "best_top1_mean": best_mean,
        "best_top1_std": best_std, "last_top1_mean": last_mean, "last_top1_std": last_std,
        "best_val_top1_mean": val_mean, "best_val_top1_std": val_std,
        "teacher_top1": sum(teacher) / len(teacher) if teacher else None,
        "wall_seconds_mean": sum(wall) / len(wall) if wall else None,
        "selection": row.selection, "seeds": row.seeds,
        # a tuned row shows the values its study chose, whether or not its siblings differ
        "settings": {**row.differing, **(row.tuned["params"] if row.tuned else {})},
        "tuned": row.tuned,
        "hyperparameters": row.runs[0].summary.get("hyperparameters", {}),  # type: ignore
    }
    baseline = baseline_of(row, rows)
    numbers["baseline_diff"] = None
    if baseline is not None and best_mean is not None:
        numbers["baseline_diff"] = best_mean - mean_std(baseline.values("best_top1"))[0]
    published = row.published
    numbers["published_top1"] = published["top1"] if published else None
    numbers["published_metric"] = published["metric"] if published else None
    numbers["published_source"] = published.get("source", "") if published else None
    numbers["published_diff"] = None
    if published:
        ours = best_mean if published["metric"] == "best" else last_mean
        numbers["published_diff"] = None if ours is None else ours - published["top1"]
    return numbers


def report_data(runs: list[Run]) -> dict[str, Any]:
    rows = group_rows(runs)
    return {"rows": [row_numbers(r, rows) for r in rows],
            "unfinished": [{"name": r.name, "path": str(r.path), "status": r.status}
                           for r in runs if not r.finished]}


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.2f}"


def _settings(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k.removeprefix('method.')}={v:.4g}" if isinstance(v, float) else
                     f"{k.removeprefix('method.')}={v}" for k, v in settings.items()) or ""


def markdown(data: dict[str, Any]) -> str:
    rows = data["rows"]
    selections = {r["selection"] for r in rows}
    best_label = BEST_LABELS[selections.pop() if len(selections) == 1 else "mixed"]
    header = ["method", "teacher → student", "data", "n", best_label, "last-epoch test top-1",
              "Δ vs baseline", "teacher top-1", "wall time"]
    # runs that never read the test split (kdzoo tune's trials) are judged on validation
    with_val = any(r["best_top1_mean"] is None and r["best_val_top1_mean"] is not None
                   for r in rows)
    if with_val:
        header.insert(6, "best val top-1")
    with_settings = any(r["settings"] for r in rows)
    with_published = any(r["published_top1"] is not None for r in rows)
    header += (["settings"] if with_settings else []) + \
        (["published (Δ)"] if with_published else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        pair = f"{r['teacher']} → {r['student']}" if r["teacher"] else r["student"]
        cells = [f"`{r['method']}`", pair, r["data"], str(r["n"]),
                 _pm(r["best_top1_mean"], r["best_top1_std"]),
                 _pm(r["last_top1_mean"], r["last_top1_std"]),
                 *([_pm(r["best_val_top1_mean"], r["best_val_top1_std"])] if with_val else []),
                 _signed(r["baseline_diff"]),
                 "–" if r["teacher_top1"] is None else f"{r['teacher_top1']:.2f}",
                 "–" if r["wall_seconds_mean"] is None else f"{r['wall_seconds_mean']:.0f}s"]
        if with_settings:
            cells.append(_settings(r["settings"]))
        if with_published:
            cells.append("–" if r["published_top1"] is None else
                         f"{r['published_top1']:.2f} {r['published_metric']} "
                         f"({_signed(r['published_diff'])})")
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    notes = ["mean ± sample standard deviation over seeds (n - 1); Δ vs baseline compares the "
             "best-epoch means with the baseline row of the same student and data"]
    if any(r["tuned"] for r in rows):
        notes.append("(tuned): settings chosen by `kdzoo tune` on the validation split (the "
                     "test split unseen during the search), shown under settings")
    if with_published:
        notes.append("published numbers are compared on the metric the publication reports "
                     "(best or last epoch)")
    text += "\n\n" + "\n".join(f"- {n}" for n in notes)
    if data["unfinished"]:
        text += "\n\nNot averaged in (unfinished): " + ", ".join(
            f"{u['name']} ({u['status']})" for u in data["unfinished"])
    return text


def to_csv(data: dict[str, Any]) -> str:
    extra = ["selection", "settings", "baseline_diff", "published_top1", "published_metric",
             "published_diff"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS + extra)
    for r in data["rows"]:
        values = [r[c] for c in CSV_COLUMNS] + [r["selection"], _settings(r["settings"])] + \
            [r[c] for c in extra[2:]]
        writer.writerow(["" if v is None else f"{v:.4f}" if isinstance(v, float) else v
                         for v in values])
    return buffer.getvalue()


def to_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, default=str)
