"""``kdzoo tune``: every method at its best on the validation split, with Optuna.

:func:`tune` searches a method's settings (its default space, ``configs/search-spaces.yaml``,
or the one given) with Optuna's TPE sampler on the validation split, pruning unpromising trials
on their per-epoch validation top-1; the study lives in an RDB storage (SQLite in the tune
folder by default), so a killed search continues and several processes can share it. Then the
best settings are retrained on ``final_seeds`` seeds and tested, next to the untuned defaults.
Layers: the command line calls this; this calls :func:`kdzoo.engine.fit`.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import threading
from dataclasses import dataclass, replace
from typing import Any

from ..errors import KdzooError
from ..layers import deep_merge
from .inspect import STATE_FILE
from .final import best_trial, completed_trials, final_runs, final_table, write_text
from .search import RunLayers, Search, check_bounds, TuneSettings, study_name, trial_epochs
from .study import default_storage, open_storage, redacted
from .space import Space, build_space, default_space, describe, parse_distribution

log = logging.getLogger("kdzoo")

#: What ``kdzoo tune`` writes in its folder besides the study, trials/ and final/.
REPORT_FILE = "tune.md"


@dataclass
class TuneResult:
    """The study, its best trial, the final runs' summaries by kind and their table."""

    study: Any
    best: Any
    finals: dict[str, list[dict]]
    table: str


def _worker(settings: TuneSettings, worker: int, ready: Any) -> None:
    try:
        search = Search(settings, settings.run.resolve(), worker)
    except BaseException:
        ready.abort()  # the other workers stop waiting for this one
        raise
    ready.wait()  # every worker starts its first trial together
    search.run()


def share_threads(settings: TuneSettings, jobs: int) -> TuneSettings:
    """With ``jobs`` processes and no ``--threads``, each gets its share of the CPU's threads."""
    if jobs <= 1 or settings.run.resolve().threads is not None:
        return settings
    threads = max(1, (os.cpu_count() or 1) // jobs)
    run = replace(settings.run, overrides=deep_merge(settings.run.overrides,
                                                     {"threads": threads}))
    return replace(settings, run=run)


def run_search(settings: TuneSettings, jobs: int = 1, first: Search | None = None) -> Any:
    """Run the search (``jobs`` processes sharing the study and the CPU threads); returns the
    study. ``first``: this process's :class:`Search`, already opened."""
    settings = share_threads(settings, jobs)
    first = first or Search(settings, settings.run.resolve())  # the study exists from here
    if jobs <= 1:
        return first.run()
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(jobs)
    workers = [context.Process(target=_worker, args=(settings, index, ready))
               for index in range(1, jobs)]
    for process in workers:
        process.start()
    try:
        try:
            ready.wait(timeout=600)
        except threading.BrokenBarrierError:
            raise KdzooError("a --jobs worker process could not open the study (its error is "
                             "above)") from None
        study = first.run()
    finally:
        for process in workers:
            process.join()
    failed = [p.exitcode for p in workers if p.exitcode != 0]
    if failed:
        raise KdzooError(f"{len(failed)} of the {jobs - 1} other --jobs processes failed (exit "
                         f"status {failed[0]}; their error is above): rerun to continue the "
                         "study")
    return study


def storage_url(settings: TuneSettings) -> str:
    return settings.storage or default_storage(settings.out)


def write_state(settings: TuneSettings) -> None:
    """tune.json: which study the folder's trials belong to (what ``kdzoo report`` and
    ``kdzoo plot`` open), with the storage's password left out."""
    base = settings.run.resolve()
    state = {"format": "kdzoo-tune/1", "study": settings.study_name or study_name(base),
             "storage": redacted(storage_url(settings)), "space": describe(settings.space),
             "n_trials": settings.n_trials, "trial_epochs": trial_epochs(settings, base),
             "final_seeds": settings.final_seeds, "pruner": settings.pruner}
    write_text(settings.out / STATE_FILE, json.dumps(state, indent=2) + "\n")


def tune(settings: TuneSettings, jobs: int = 1) -> TuneResult:
    """Search, then train the final runs (unless ``final_seeds`` is 0). Bad input (the run's
    settings, the space, an unreachable storage, a study of other settings) is refused before
    anything is written."""
    settings = share_threads(settings, jobs)
    base = settings.run.resolve()
    check_bounds(settings)
    if settings.storage:
        open_storage(settings.storage)
    created = not settings.out.exists()
    settings.out.mkdir(parents=True, exist_ok=True)
    try:
        first = Search(settings, base)
    except Exception:
        if created:
            shutil.rmtree(settings.out, ignore_errors=True)
        raise
    write_state(settings)
    study = run_search(settings, jobs, first)
    finals: dict[str, list[dict]] = {"tuned": [], "default": []}
    table = ""
    if settings.final_seeds == 0 and not completed_trials(study):
        log.info("no trial completed yet (%d trials)", len(study.trials))
        return TuneResult(study, None, finals, table)
    best = best_trial(study)
    log.info("best trial %d: val top-1 %.2f%% with %s", best.number, best.value,
             ", ".join(f"{k}={v}" for k, v in best.params.items()))
    if settings.final_seeds > 0:
        finals = final_runs(settings, study, storage_url(settings))
        table = final_table(study, finals)
        write_text(settings.out / REPORT_FILE, table + "\n")
    return TuneResult(study, best, finals, table)


__all__ = ["RunLayers", "Space", "TuneResult", "TuneSettings", "build_space", "default_space",
           "describe", "parse_distribution", "run_search", "study_name", "trial_epochs", "tune"]
