"""``kdzoo bench``: its options, checked, for :func:`kdzoo.bench.run.run_bench`."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from ..errors import KdzooError

log = logging.getLogger("kdzoo")


def add_bench_parser(sub: Any) -> None:
    from ..bench.run import CASES, BenchOptions

    d = BenchOptions()
    p = sub.add_parser("bench", help="measure kdzoo's training step against the conventional "
                                     "loop of the other zoos, in one process")
    p.add_argument("--cases", default=",".join(d.cases),
                   help=f"comma-separated, from {', '.join(CASES)} (default: all)")
    p.add_argument("--teacher", default=d.teacher)
    p.add_argument("--student", default=d.student)
    p.add_argument("--batch-size", type=int, help="default 128 (64 for crd)")
    p.add_argument("--steps", type=int, default=d.steps, help="timed steps per round and side")
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--images", type=int, default=d.images, help="training images written")
    p.add_argument("--test-images", type=int, default=d.test_images)
    p.add_argument("--device", default=d.device)
    p.add_argument("--compile", action="store_true",
                   help="also time kdzoo with --compile (a third side)")
    p.add_argument("--amp", choices=["bf16", "fp16"],
                   help="also time kdzoo with --amp (another side)")
    p.add_argument("--epoch", action="store_true",
                   help="also time a whole epoch plus evaluation on each side")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--workdir", metavar="DIR", help="folder for the temporary data")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")


def cmd_bench(args: argparse.Namespace) -> int:
    from ..bench.run import CASES, BenchOptions, run_bench
    from ..registry import did_you_mean

    cases = tuple(c.strip() for c in args.cases.split(",") if c.strip())
    for case in cases:
        if case not in CASES:
            raise KdzooError(f"unknown bench case '{case}'{did_you_mean(case, list(CASES))}; "
                             f"cases: {', '.join(CASES)}")
    for name in ("steps", "rounds", "images", "test_images"):
        if getattr(args, name) < 1:
            raise KdzooError(f"--{name.replace('_', '-')} must be positive")
    if args.json and Path(args.json).exists():
        raise KdzooError(f"{args.json} exists; choose another --json file")
    options = BenchOptions(cases=cases, teacher=args.teacher, student=args.student,
                           batch_size=args.batch_size, steps=args.steps, rounds=args.rounds,
                           warmup=args.warmup, images=args.images, test_images=args.test_images,
                           device=args.device, compile=args.compile, amp=args.amp,
                           epoch=args.epoch,
                           threads=args.threads, workdir=args.workdir)
    results = run_bench(options, report=log.info)
    if args.json:
        from ..io import atomic_write_json

        atomic_write_json(args.json, results)
        log.info("results written to %s", args.json)
    return 0
