"""Running a grid: each missing run is started, each interrupted one resumed, each finished one
skipped, teachers before the runs that distil from them; ``jobs`` runs at once as separate
processes. A failed run does not stop the grid: it is reported at the end with its log's last
line, and the runs that needed it (a teacher) are skipped as failed.

The zoo folder holds ``configs/<name>.yaml`` (each run's full config, what
``kdzoo train --config`` runs), ``zoo.json`` (the grid: its runs, their roles and published
numbers, read by ``kdzoo report``) and one folder per run.
"""
from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..engine import SharedParts, fit
from ..engine.rundir import LOG, run_status
from ..errors import KdzooError
from ..io import atomic_write_json, atomic_write_text
from .grid import Grid, RunPlan

log = logging.getLogger("kdzoo")

ZOO_FILE = "zoo.json"
ZOO_FORMAT = "kdzoo-zoo/1"


def status(run: RunPlan) -> str:
    """The run folder's :func:`~kdzoo.engine.rundir.run_status`: "finished", "interrupted"
    (resume it) or "not started"."""
    return run_status(run.config.out or "")


def config_file(grid: Grid, run: RunPlan) -> Path:
    return grid.root / "configs" / f"{run.name}.yaml"


def train_command(grid: Grid, run: RunPlan) -> list[str]:
    """The ``kdzoo train`` arguments that run (or resume) ``run``."""
    argv = ["train", "--config", str(config_file(grid, run)), "--no-progress"]
    return argv + (["--resume"] if status(run) == "interrupted" else [])


def write_grid(grid: Grid) -> None:
    """configs/<name>.yaml for every run, and zoo.json (never a run's own files)."""
    for run in grid:
        path = config_file(grid, run)
        text = run.config.to_yaml()
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, text)
    atomic_write_json(grid.root / ZOO_FILE, {
        "format": ZOO_FORMAT,
        "runs": [{"name": r.name, "role": r.role, "method": r.method, "teacher": r.teacher,
                  "student": r.student, "data": r.data, "seed": r.seed, "needs": r.needs,
                  "label": r.label, "published": r.published,
                  "config": str(config_file(grid, r))}
                 for r in grid],
    })


def launcher(nproc: int, shown: bool = False) -> list[str]:
    """The command that starts ``kdzoo``: itself, or torchrun with ``nproc`` processes on this
    machine (``--standalone``: a free port of its own, so parallel runs never collide)."""
    if nproc == 1:
        return ["kdzoo"] if shown else [sys.executable, "-m", "kdzoo"]
    run = ["torchrun"] if shown else [sys.executable, "-m", "torch.distributed.run"]
    return [*run, "--standalone", f"--nproc_per_node={nproc}", "-m", "kdzoo"]


def dry_run_commands(grid: Grid, nproc: int = 1) -> list[str]:
    """One ``kdzoo train`` command per run that is not finished, teachers first."""
    return [shlex.join([*launcher(nproc, shown=True), *train_command(grid, run)])
            for run in grid if status(run) != "finished"]


@dataclass
class Outcome:
    run: RunPlan
    ok: bool
    seconds: float
    message: str = ""  # a failed run's last log line


def last_log_line(run: RunPlan, fallback: str = "") -> str:
    path = Path(run.config.out or "") / LOG
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError:
        lines = []
    return fallback or (lines[-1] if lines else "(no log)")


def _in_process(run: RunPlan, shared: SharedParts) -> Outcome:
    """The run through the Python API, in this process (under the run context that restores
    every process-global setting afterwards), sharing datasets and frozen teachers with the
    grid's other runs."""
    start = time.perf_counter()
    try:
        fit(run.config, resume=status(run) == "interrupted", progress=False, shared=shared)
    except KdzooError as exc:  # bad input or a failed run: one line, as the CLI would print
        return Outcome(run, False, time.perf_counter() - start, str(exc))
    except Exception as exc:  # noqa: BLE001 - a bug in one run must not stop the grid
        return Outcome(run, False, time.perf_counter() - start, f"{type(exc).__name__}: {exc}")
    return Outcome(run, True, time.perf_counter() - start)


def _in_subprocess(grid: Grid, run: RunPlan, env: dict[str, str], nproc: int = 1) -> Outcome:
    start = time.perf_counter()
    done = subprocess.run([*launcher(nproc), "-q", *train_command(grid, run)],
                          env=env, capture_output=True, text=True, check=False)
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    return Outcome(run, done.returncode == 0, time.perf_counter() - start,
                   "" if done.returncode == 0 else last_log_line(
                       run, errors[-1] if errors else ""))


def worker_environment(index: int, jobs: int, nproc: int = 1) -> dict[str, str]:
    """A worker's environment: its share of the CPU threads (per process, with ``nproc``
    processes per run), and of the GPUs when there are several (worker i sees ``nproc`` GPUs
    starting at i x nproc, modulo the count)."""
    env = dict(os.environ)
    threads = max(1, (os.cpu_count() or 1) // (jobs * nproc))
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count > 1 and jobs > 1 and "CUDA_VISIBLE_DEVICES" not in os.environ:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str((index * nproc + k) % count)
                                               for k in range(nproc))
    return env


def run_grid(grid: Grid, jobs: int = 1, report: Callable[[str], None] = log.info,
             nproc: int = 1) -> list[Outcome]:
    """Run every run of ``grid`` that is not finished (see the module docstring); returns the
    outcome of each run that was started, in completion order. With ``jobs`` 1 the runs go one
    after another in this process (each under the run context that restores process-global
    settings); with more, in worker processes; with ``nproc`` > 1 each run is a torchrun launch
    of that many processes (DDP)."""
    if jobs < 1 or nproc < 1:
        raise KdzooError(f"--jobs and --nproc-per-node must be positive, got {jobs} and {nproc}")
    write_grid(grid)
    pending = [run for run in grid if status(run) != "finished"]
    report(f"zoo {grid.root}: {len(grid.runs)} runs, {len(grid.runs) - len(pending)} finished, "
           f"{len(pending)} to run" + (f" ({jobs} at once)" if jobs > 1 and pending else ""))
    state = _Progress(grid, pending, report)
    if jobs == 1 and nproc == 1:
        shared = SharedParts()
        while (run := state.next_ready()) is not None:
            state.finish(_in_process(run, shared))
        return state.outcomes
    slots = list(range(jobs))
    running: dict[Future, int] = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while state.pending or running:
            while len(running) < jobs and (run := state.next_ready()) is not None:
                slot = slots.pop(0)
                running[pool.submit(_in_subprocess, grid, run,
                                    worker_environment(slot, jobs, nproc), nproc)] = slot
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                slots.append(running.pop(future))
                state.finish(future.result())
    return state.outcomes


class _Progress:
    """Which runs are done, failed or waiting, and the next one whose teachers are done."""

    def __init__(self, grid: Grid, pending: list[RunPlan],
                 report: Callable[[str], None]) -> None:
        self.grid, self.pending, self.report = grid, list(pending), report
        self.done = {r.name for r in grid if r not in pending}
        self.failed: set[str] = set()
        self.outcomes: list[Outcome] = []
        self.started, self.total = 0, len(pending)

    def next_ready(self) -> RunPlan | None:
        for run in list(self.pending):
            if any(need in self.failed for need in run.needs):
                self.pending.remove(run)
                names = ", ".join(n for n in run.needs if n in self.failed)
                self.finish(Outcome(run, False, 0.0, f"its teacher run failed: {names}"))
                continue
            if all(need in self.done for need in run.needs):
                self.pending.remove(run)
                self.started += 1
                verb = "resume" if status(run) == "interrupted" else "run"
                self.report(f"[{self.started}/{self.total}] {verb} {run.name}")
                return run
        return None

    def finish(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        (self.done if outcome.ok else self.failed).add(outcome.run.name)
        if outcome.seconds:
            self.report(f"  {outcome.run.name}: {'done' if outcome.ok else 'FAILED'} in "
                        f"{outcome.seconds:.0f}s")


def failure_lines(outcomes: list[Outcome]) -> list[str]:
    return [f"{o.run.name}: {o.message}" for o in outcomes if not o.ok]
