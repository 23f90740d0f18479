"""The per-epoch record of metrics.jsonl, one structured JSON object per epoch:

```
{"epoch": 3, "stage": "main", "stage_epoch": 3, "lr": 0.1,
 "terms": {"loss": 1.23, "ce": 1.01, "st": 0.22},          # the epoch's mean loss terms
 "train": {"top1": 61.2, "top5": 95.0, "images_per_second": 410.0},
 "val":   {"top1": 60.1, "top5": 94.3, "loss": 1.1},       # with --val-split
 "test":  {"top1": 59.8, "top5": 94.1, "loss": 1.1},       # every evaluated epoch
 "peers": {"peer": {"test": {...}, "val": {...}}},          # trained peers (DML)
 "time":  {"train_seconds": 20.1, "eval_seconds": 1.2, "epoch_seconds": 21.3}}
```

so no consumer guesses a key's meaning from its suffix. ``summary.json`` names this format in
``metrics_format``.
"""
from __future__ import annotations

import math
from typing import Any, Iterator

from .guard import NonFiniteError

METRICS_FORMAT = "kdzoo-metrics/2"


def epoch_record(epoch: int, stage: str, stage_epoch: int, lr: float, trained: dict[str, Any],
                 evaluated: dict[str, Any] | None) -> dict[str, Any]:
    """The record of one epoch from what training and evaluation returned."""
    record: dict[str, Any] = {"epoch": epoch, "stage": stage, "stage_epoch": stage_epoch,
                              "lr": lr, "terms": trained["terms"], "train": trained["train"]}
    seconds = dict(trained["time"])
    if evaluated is not None:
        record.update({k: v for k, v in evaluated.items() if k != "time"})
        seconds.update(evaluated["time"])
    seconds["epoch_seconds"] = sum(seconds.values())
    record["time"] = seconds
    return record


def _numbers(value: Any, path: str = "") -> Iterator[tuple[str, float]]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _numbers(inner, f"{path}.{key}" if path else key)
    elif isinstance(value, float):
        yield path, value


def check_finite(record: dict[str, Any]) -> None:
    """Stop the run (keeping its last good checkpoint) when a number of the epoch is NaN/inf."""
    bad = [path for path, value in _numbers(record) if not math.isfinite(value)]
    if bad:
        raise NonFiniteError(
            f"non-finite {', '.join(bad)} in epoch {record['epoch']}; the run stopped and its "
            "last good checkpoint is kept: lower the learning rate or the method's weight "
            "and rerun with --resume"
        )


def epoch_line(record: dict[str, Any], total_epochs: int) -> str:
    """One log line per epoch: lr, the loss and its terms, accuracies, speed."""
    terms = dict(record["terms"])
    loss = terms.pop("loss")
    parts = [f"epoch {record['epoch']}/{total_epochs} [{record['stage']}] lr {record['lr']:.4g}",
             f"loss {loss:.4f} ({', '.join(f'{k} {v:.4f}' for k, v in terms.items())})"]
    if "top1" in record["train"]:
        parts.append(f"train top-1 {record['train']['top1']:.2f}%")
    if "val" in record:
        parts.append(f"val top-1 {record['val']['top1']:.2f}%")
    if "test" in record:
        parts.append(f"test top-1 {record['test']['top1']:.2f}% top-5 "
                     f"{record['test']['top5']:.2f}%")
    for role, scores in record.get("peers", {}).items():
        parts.append(f"{role} test top-1 {scores['test']['top1']:.2f}%")
    parts.append(f"{record['time']['epoch_seconds']:.1f}s, "
                 f"{record['train']['images_per_second']:.0f} img/s")
    return " | ".join(parts)


#: Keys of a kdzoo 0.1 record (flat) that are not loss terms.
_LEGACY_FIELDS = {"epoch", "stage", "stage_epoch", "lr", "train_top1", "train_top5",
                  "images_per_second", "skipped_batches", "train_seconds", "eval_seconds",
                  "epoch_seconds"}


def upgrade_record(record: dict[str, Any]) -> dict[str, Any]:
    """A record of kdzoo 0.1's flat format (``test_top1``, ``peer_test_top1``, ...) in today's
    structure, so a run started before the upgrade resumes; today's records pass through."""
    if "terms" in record:
        return record
    evaluated = [k for k in record if k.endswith(("test_top1", "test_top5", "test_loss"))]
    new: dict[str, Any] = {k: record[k] for k in ("epoch", "stage", "stage_epoch", "lr")}
    new["terms"] = {k: v for k, v in record.items()
                    if k not in _LEGACY_FIELDS and k not in evaluated}
    new["train"] = {key: record[old] for old, key in (
        ("train_top1", "top1"), ("train_top5", "top5"), ("images_per_second",
                                                         "images_per_second"),
        ("skipped_batches", "skipped_batches")) if old in record}
    for key in evaluated:
        prefix, metric = key.split("test_")
        scores = {"test": {}}
        target = new if not prefix else new.setdefault("peers", {}).setdefault(
            prefix.rstrip("_"), scores)
        target.setdefault("test", {})[metric] = record[key]
    new["time"] = {k: record[k] for k in ("train_seconds", "eval_seconds", "epoch_seconds")
                   if k in record}
    return new
