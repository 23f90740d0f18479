"""The ``kdzoo zoo``, ``kdzoo report`` and ``kdzoo plot`` commands (the grid and its runner are
:mod:`kdzoo.zoo`; the tables and figures :mod:`kdzoo.report`)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from ..errors import KdzooError
from ..layers import deep_merge, parse_set
from ..zoo.grid import Grid, expand, load_grid_spec
from ..zoo.runner import dry_run_commands, failure_lines, run_grid, write_grid
from .run import add_run_options, run_overrides

log = logging.getLogger("kdzoo")

#: The files `kdzoo plot` writes (and may replace) in its folder.
PLOT_FILES = {"accuracy.png", "terms.png", "results.png"}
#: The files `kdzoo plot TUNE_DIR` writes besides (and slice_<hyper-parameter>.png).
STUDY_PLOTS = {"optimization_history.png", "param_importances.png"}


def add_zoo_parser(sub: Any) -> None:
    p = sub.add_parser(
        "zoo", help="run a grid of methods x (teacher, student) pairs x seeds",
        description="Run a grid from flags or a YAML grid (--grid FILE, or a packaged grid: "
                    "`kdzoo list grids`). Teachers are trained once and reused; finished runs "
                    "are skipped and interrupted ones resumed when the command is repeated. The "
                    "run options apply to every run (over the grid's settings).")
    p.add_argument("--grid", metavar="FILE_OR_NAME", help="a YAML grid, or a packaged grid")
    p.add_argument("--methods", help="all, or a comma-separated list of methods")
    p.add_argument("--teacher", help="the teacher of the pair")
    p.add_argument("--student", help="the student of the pair")
    p.add_argument("--data", help="a dataset, or a comma-separated list")
    p.add_argument("--seeds", type=int, help="number of seeds (0 .. N-1)")
    p.add_argument("--out", metavar="ZOO_DIR", required=True,
                   help="the zoo folder: one folder per run, configs/, zoo.json")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at once, as separate processes sharing the CPU threads (and "
                        "GPUs) between them (default 1: one after another in this process)")
    p.add_argument("--nproc-per-node", type=int, default=1, metavar="N",
                   help="train each run with DistributedDataParallel on N processes of this "
                        "machine (torchrun --standalone; N GPUs, or N CPU processes)")
    p.add_argument("--tune-trials", type=int, metavar="K",
                   help="first tune every method of the grid with K Optuna trials per pair and "
                        "dataset on the validation split, then run the grid with each method's "
                        "best settings (as a tune: section in the grid file)")
    p.add_argument("--trial-epochs", type=int, metavar="N",
                   help="with --tune-trials: the epochs of each trial (default: the runs')")
    p.add_argument("--dry-run", action="store_true",
                   help="print one `kdzoo train` command per run still to do, teachers first, "
                        "instead of running them (for SLURM arrays, xargs -P, ...)")
    add_run_options(p)


def zoo_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The grid of ``--grid`` (if any) with the flags on top."""
    spec: dict[str, Any] = dict(load_grid_spec(args.grid)) if args.grid else {}
    if args.methods:
        spec["methods"] = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.student:
        spec["pairs"] = [{"teacher": args.teacher, "student": args.student}]
    elif args.teacher:
        raise KdzooError("--teacher needs --student (the pair's student)")
    if args.data:
        spec["data"] = [d.strip() for d in args.data.split(",") if d.strip()]
    if args.seeds is not None:
        spec["seeds"] = args.seeds
    # the grid says which method, pair, data, seed and folder each run has
    flags = run_overrides(argparse.Namespace(**{**vars(args), "teacher": None, "student": None,
                                                "data": None, "out": None}))
    if args.teacher_checkpoint:
        flags.pop("teacher", None)
        teacher = args.teacher or next(iter(p.get("teacher") for p in spec.get("pairs", [])),
                                       None)
        if teacher is None:
            raise KdzooError("--teacher-checkpoint needs the teacher it belongs to: --teacher")
        spec["teachers"] = {**spec.get("teachers", {}), teacher: args.teacher_checkpoint}
    settings = deep_merge(spec.get("settings") or {}, flags)
    spec["settings"] = deep_merge(settings, parse_set(args.assignments))
    return spec


def cmd_zoo(args: argparse.Namespace) -> int:
    spec = zoo_spec(args)
    if args.tune_trials is not None:
        spec["tune"] = {**(spec.get("tune") or {}), "trials": args.tune_trials}
    if args.trial_epochs is not None:
        if spec.get("tune") is None:
            raise KdzooError("--trial-epochs goes with --tune-trials (or a tune: section)")
        spec["tune"] = {**spec["tune"], "trial_epochs": args.trial_epochs}
    if spec.get("tune") is not None:
        from ..tune.grid import tune_grid, tune_section

        tune_section(spec)  # checked before anything runs
        if args.dry_run:
            raise KdzooError("--dry-run cannot print a tuned grid's runs before its studies "
                             "have chosen their settings: run `kdzoo zoo` with the tuning first")
        expand(spec, args.out)  # the grid's own errors, before any teacher trains
        grid: Grid = tune_grid(spec, args.out, jobs=args.jobs)
    else:
        grid = expand(spec, args.out)
    if args.dry_run:
        write_grid(grid)  # the configs the commands run
        for command in dry_run_commands(grid, args.nproc_per_node):
            print(command)
        return 0
    outcomes = run_grid(grid, jobs=args.jobs, nproc=args.nproc_per_node)
    failures = failure_lines(outcomes)
    if failures:
        print(f"kdzoo: {len(failures)} of {len(outcomes)} runs failed:\n" +
              "\n".join(f"  {line}" for line in failures), file=sys.stderr)
        return 1
    log.info("zoo %s complete: `kdzoo report %s` for the table, `kdzoo plot %s --out DIR` for "
             "the figures", args.out, args.out, args.out)
    return 0


def add_report_parser(sub: Any) -> None:
    p = sub.add_parser("report", help="results table of runs and zoos (mean ± std over seeds)")
    p.add_argument("paths", nargs="+", metavar="RUN_OR_ZOO_DIR")
    p.add_argument("--csv", metavar="FILE", help="also write the table as CSV")
    p.add_argument("--json", metavar="FILE", help="also write the table as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace existing --csv/--json files")


def _write_new(path: str, text: str, overwrite: bool) -> None:
    from ..io import atomic_write_text

    if Path(path).exists() and not overwrite:
        raise KdzooError(f"{path} exists: choose another file, or pass --overwrite")
    atomic_write_text(Path(path), text)


def cmd_report(args: argparse.Namespace) -> int:
    from ..report.collect import collect
    from ..report.table import markdown, report_data, to_csv, to_json

    from ..tune.inspect import is_tune_folder, load_tune_study, trials_table

    studies = [p for p in args.paths if is_tune_folder(p)]
    runs = [p for p in args.paths if p not in studies or (Path(p) / "final").is_dir()]
    data = report_data(collect(runs)) if runs else None
    if data is not None:
        print(markdown(data))
    for path in studies:  # a tune folder: its study's best trials too
        print(f"\n{path}: {trials_table(load_tune_study(path))}")
    if data is None:
        if args.csv or args.json:
            raise KdzooError("--csv and --json write the runs' table, and these tune folders "
                             "have no final runs yet")
        return 0
    if args.csv:
        _write_new(args.csv, to_csv(data), args.overwrite)
    if args.json:
        _write_new(args.json, to_json(data), args.overwrite)
    return 0


def add_plot_parser(sub: Any) -> None:
    p = sub.add_parser("plot", help="PNG figures of runs and zoos: accuracy per epoch, loss "
                                    "terms, the results table as bars")
    p.add_argument("paths", nargs="+", metavar="RUN_OR_ZOO_DIR")
    p.add_argument("--out", metavar="PLOT_DIR", required=True,
                   help=f"the folder for {', '.join(sorted(PLOT_FILES))}")


def cmd_plot(args: argparse.Namespace) -> int:
    from ..report.collect import collect
    from ..report.plot import plot

    from ..tune.inspect import is_tune_folder, load_tune_study, plot_study

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or
                         any(not _is_plot_file(p.name) for p in out.iterdir())):
        raise KdzooError(f"{out} exists and holds other files than kdzoo's plots: choose "
                         "another --out")
    studies = [path for path in args.paths if is_tune_folder(path)]
    for path in studies:  # Optuna's pictures of the search
        prefix = f"{Path(path).resolve().name}--" if len(studies) > 1 else ""
        for written in plot_study(load_tune_study(path), out, prefix):
            print(written)
    runs = [p for p in args.paths if p not in studies or (Path(p) / "final").is_dir()]
    if runs:
        for name, figure in plot(collect(runs), out).items():
            print(f"{figure['path']}")
    return 0


def _is_plot_file(name: str) -> bool:
    stem = name.split("--")[-1]  # several tune folders: <folder>--<plot>.png
    return stem in PLOT_FILES | STUDY_PLOTS or stem.startswith("slice_") and stem.endswith(".png")
