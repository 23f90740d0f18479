"""``kdzoo tune``: search a method's settings on the validation split (:mod:`kdzoo.tune`)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from ..errors import KdzooError
from .run import add_run_options, run_overrides

log = logging.getLogger("kdzoo")


def add_tune_parser(sub: Any) -> None:
    p = sub.add_parser(
        "tune", help="search a method's hyper-parameters with Optuna on the validation split, "
                     "then retrain the best on several seeds",
        description="Search the method's settings (its default space: `kdzoo list methods "
                    "--search-space`; or --space/--space-file) with Optuna's TPE sampler. Each "
                    "trial is a run in OUT/trials/ that reads only the validation split; "
                    "unpromising trials are pruned on their per-epoch validation top-1. The "
                    "study is kept in OUT/study.db (or --storage): run the same command again to "
                    "continue it. Then the best settings and the untuned defaults are trained "
                    "on --final-seeds seeds and tested (OUT/final/, OUT/tune.md).")
    p.add_argument("--method", help="distillation method (`kdzoo list methods`)")
    p.add_argument("--teacher", help="teacher model name")
    p.add_argument("--student", help="student model name (default resnet20)")
    p.add_argument("--data", help="dataset (`kdzoo list datasets`); default digits")
    p.add_argument("--seed", type=int, help="the trials' seed (the final runs use 0 .. N-1)")
    p.add_argument("--config", metavar="FILE.yaml", help="YAML config file")
    p.add_argument("--out", metavar="TUNE_DIR", required=True,
                   help="the tune folder: study.db, trials/, final/, tune.md")
    p.add_argument("--n-trials", type=int, default=20,
                   help="trials the study holds when done (a rerun continues to this number)")
    p.add_argument("--trial-epochs", type=int, metavar="N",
                   help="epochs of each trial (default: the run's --epochs, which the final "
                        "runs train)")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="start no new trial once this many seconds have passed (the trial "
                        "running then finishes; at least one trial runs)")
    p.add_argument("--jobs", type=int, default=1,
                   help="trials at once, as processes sharing the study and the CPU threads")
    p.add_argument("--study-name", help="the study's name in the storage (default "
                                        "<method>-<teacher>-<student>-<data>)")
    p.add_argument("--storage", metavar="URL",
                   help="an SQLAlchemy URL Optuna accepts (postgresql://..., sqlite:///FILE) "
                        "that several processes or machines share (default: sqlite in --out)")
    p.add_argument("--space", action="append", default=[], metavar="KEY=DISTRIBUTION",
                   help="search KEY with DISTRIBUTION, over the method's default space, e.g. "
                        "method.weight=loguniform:0.01:100 or optim.lr=loguniform:0.01:0.2 "
                        "(repeatable; kinds: uniform, loguniform, int, logint, categorical)")
    p.add_argument("--space-file", metavar="FILE.yaml",
                   help="a YAML space {KEY: DISTRIBUTION} over the default one (null drops a "
                        "key)")
    p.add_argument("--no-default-space", action="store_true",
                   help="search only --space/--space-file, not the method's default space")
    p.add_argument("--pruner", default="median",
                   choices=["median", "hyperband", "successive-halving", "none"],
                   help="how unpromising trials stop early (default median)")
    p.add_argument("--final-seeds", type=int, default=3,
                   help="seeds of the final tuned and default runs (0: search only)")
    p.add_argument("--sampler-seed", type=int,
                   help="the TPE sampler's seed (default: from --seed and the study's trials)")
    add_run_options(p)
    p.set_defaults(val_split=0.1)


def cmd_tune(args: argparse.Namespace) -> int:
    from ..tune import RunLayers, TuneSettings, build_space, tune

    for flag, value, least in (("--n-trials", args.n_trials, 1), ("--jobs", args.jobs, 1),
                               ("--final-seeds", args.final_seeds, 0),
                               ("--trial-epochs", args.trial_epochs, 1)):
        if value is not None and value < least:
            raise KdzooError(f"{flag} must be at least {least}, got {value}")
    if args.timeout is not None and args.timeout <= 0:
        raise KdzooError(f"--timeout must be positive, got {args.timeout}")
    if args.val_split is None or args.val_split <= 0:
        raise KdzooError("kdzoo tune searches on a validation split: --val-split must be a "
                         f"fraction in (0, 1), got {args.val_split}")
    overrides = run_overrides(argparse.Namespace(**{**vars(args), "out": None}))
    run = RunLayers(args.config, overrides, tuple(args.assignments))
    base = run.resolve()
    space = build_space(base, args.space_file, args.space,
                        defaults=not args.no_default_space)
    given = {f"{k}" for k in _flat_keys(args.assignments)}
    both = sorted(given & set(space))
    if both:
        raise KdzooError(f"{', '.join(both)} is both set (--set) and searched (--space or the "
                         "default space): drop one")
    settings = TuneSettings(run=run, space=space, out=Path(args.out), n_trials=args.n_trials,
                            trial_epochs=args.trial_epochs, timeout=args.timeout,
                            study_name=args.study_name, storage=args.storage,
                            pruner=args.pruner, final_seeds=args.final_seeds,
                            sampler_seed=args.sampler_seed,
                            progress=False if args.no_progress else None)
    result = tune(settings, jobs=args.jobs)
    if result.table:
        print(result.table)
    log.info("study %s: %d trials; `kdzoo report %s` lists them, `kdzoo plot %s --out DIR` "
             "draws the search", result.study.study_name, len(result.study.trials), args.out,
             args.out)
    return 0


def _flat_keys(assignments: list[str]) -> list[str]:
    return [item.partition("=")[0].strip() for item in assignments]
