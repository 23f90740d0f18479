"""Every registered method, distilled for real on scikit-learn's digits: a short run each.

Trains a resnet20 teacher once, then a resnet8 student with every method from the same initial
weights, and prints (and writes as JSON) the final epoch's loss terms and the test accuracy.
Multi-stage methods get shortened initialisation stages. Usage:

    python benchmarks/methods_on_digits.py [--epochs 15] [--out runs/methods-on-digits]
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import kdzoo
from kdzoo.engine import read_metrics

SHORT_STAGES = {"fsp": {"init_epochs": 5}, "ab": {"init_epochs": 5},
                "ft": {"paraphraser_epochs": 5}}
RECIPE = {"batch_size": 64, "lr": 0.1, "weight_decay": 5e-4, "schedule": "cosine"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--teacher-epochs", type=int, default=30)
    parser.add_argument("--out", default="runs/methods-on-digits")
    parser.add_argument("--methods", default=",".join(kdzoo.list_methods()))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    root = Path(args.out)
    teacher_dir = root / "teacher"
    if not (teacher_dir / "student.pt").is_file():
        kdzoo.fit(kdzoo.resolve_config(overrides={
            "student": {"name": "resnet20"}, "data": {"name": "digits"},
            "optim": {**RECIPE, "epochs": args.teacher_epochs}, "out": str(teacher_dir)}),
            overwrite=True, progress=False)
    teacher = json.loads((teacher_dir / "summary.json").read_text())
    print(f"teacher resnet20: best top-1 {teacher['best_top1']:.2f}%")
    rows = []
    for method in args.methods.split(","):
        config = kdzoo.resolve_config(overrides={
            "method": {"name": method, **SHORT_STAGES.get(method, {})},
            "teacher": {"name": "resnet20", "checkpoint": str(teacher_dir / "student.pt")},
            "student": {"name": "resnet8"}, "data": {"name": "digits"},
            "optim": {**RECIPE, "epochs": args.epochs}, "out": str(root / method)})
        result = kdzoo.fit(config, overwrite=True, progress=False)
        last = read_metrics(result.path)[-1]
        skip = ("epoch", "stage", "stage_epoch", "lr", "images_per_second")
        terms = {k: v for k, v in last.items()
                 if k not in skip and not k.endswith(("top1", "top5", "seconds", "test_loss"))}
        row = {"method": method, "epochs": result.summary["epochs"], "terms": terms,
               "best_top1": result.summary["best_top1"],
               "last_top1": result.summary["last_top1"],
               "seconds": result.summary["wall_seconds"]}
        rows.append(row)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in terms.items())
        print(f"{method:9s} {row['epochs']:3d} ep | {shown} | test top-1 best "
              f"{row['best_top1']:.2f}% last {row['last_top1']:.2f}% | {row['seconds']:.0f}s")
    (root / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
