"""``kdzoo demo``: a small distillation on the embedded digits data (:mod:`kdzoo.demo`)."""
from __future__ import annotations

import argparse
from typing import Any


def add_demo_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="a small distillation on the embedded digits data "
                                    "(teacher, baseline student, distilled student)")
    p.add_argument("--out", metavar="DIR", default="runs/demo",
                   help="the demo's zoo folder (its finished runs are reused when run again)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true",
                   help="accepted for compatibility: the demo logs one line per epoch")


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    run_demo(args.out, epochs=args.epochs, seed=args.seed)
    return 0
