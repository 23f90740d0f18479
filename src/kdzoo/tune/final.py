"""After the search, the honest number: the best trial's settings, retrained on several seeds
and tested, next to the untuned defaults' runs of the same seeds.

The final runs keep the validation split (their best epoch is chosen on it, the test top-1 is
read at that epoch: "best-on-val") and train the run's full ``--epochs``; each is an ordinary
run folder under ``<tune folder>/final/`` (``tuned-s<seed>``, ``default-s<seed>``). A finished
one is kept, an interrupted one continued, when ``kdzoo tune`` runs again.
"""
from __future__ import annotations

import logging
import statistics
from pathlib import Path
from typing import Any

from ..engine import SharedParts, fit, read_summary, run_status
from ..layers import nest
from ..errors import KdzooError
from .search import TuneSettings, trial_epochs, tuned_record
from .space import shown
from .study import optuna_module

log = logging.getLogger("kdzoo")


def completed_trials(study: Any) -> list[Any]:
    """The trials that ran all their epochs (a pruned trial has a value too: its last
    report)."""
    return [t for t in study.trials if t.state == optuna_module().trial.TrialState.COMPLETE]


def best_trial(study: Any) -> Any:
    """The completed trial with the best validation top-1, or one line saying why none is."""
    complete = completed_trials(study)
    if not complete:
        counts: dict[str, int] = {}
        for t in study.trials:
            counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
        listed = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no trials"
        raise KdzooError(f"study {study.study_name} has no completed trial ({listed}): run more "
                         "trials (--n-trials), or use --pruner none")
    return max(complete, key=lambda t: (t.value, -t.number))


def final_runs(settings: TuneSettings, study: Any, storage: str) -> dict[str, list[dict]]:
    """Train (or keep, or continue) the final runs; their summaries by kind ("tuned",
    "default")."""
    best = best_trial(study)
    base = settings.run.resolve()
    record = tuned_record(study, storage, settings.space, best, trial_epochs(settings, base))
    shared = SharedParts()
    found: dict[str, list[dict]] = {"tuned": [], "default": []}
    for seed in range(settings.final_seeds):
        for kind in ("tuned", "default"):
            folder = settings.out / "final" / f"{kind}-s{seed}"
            on_top: dict[str, Any] = {"seed": seed, "out": str(folder)}
            if kind == "tuned":
                on_top.update({**nest(best.params), "tuned": record})
            config = settings.run.resolve(on_top)
            status = run_status(folder)
            if status != "finished":
                log.info("final run %s (%s settings, seed %d)", folder, kind, seed)
                fit(config, resume=status == "interrupted", progress=settings.progress,
                    shared=shared)
            found[kind].append(read_summary(folder))
    return found


def mean_std(values: list[float | None]) -> str:
    numbers = [v for v in values if v is not None]
    if not numbers:
        return "-"
    if len(numbers) == 1:
        return f"{numbers[0]:.2f}"
    return f"{statistics.mean(numbers):.2f} ± {statistics.stdev(numbers):.2f}"


def final_table(study: Any, finals: dict[str, list[dict]]) -> str:
    """The final runs' test top-1 (mean ± std over seeds; best-on-val and last epoch) as a
    markdown table, tuned next to default, with the tuned settings."""
    best = best_trial(study)
    settings = ", ".join(f"{k}={shown(v)}" for k, v in best.params.items())
    rows = ["| settings | seeds | test top-1, best-on-val epoch | test top-1, last epoch | "
            "val top-1 |", "|---|---|---|---|---|"]
    for kind, label in (("tuned", f"tuned (trial {best.number}: {settings})"),
                        ("default", "defaults (untuned)")):
        runs = finals[kind]
        rows.append(f"| {label} | {len(runs)} | {mean_std([r['best_top1'] for r in runs])} | "
                    f"{mean_std([r['last_top1'] for r in runs])} | "
                    f"{mean_std([r['best_val_top1'] for r in runs])} |")
    return "\n".join(rows)



def write_text(path: Path, text: str) -> None:
    from ..io import atomic_write_text

    atomic_write_text(path, text)
