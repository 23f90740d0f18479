"""The search: Optuna trials, each an ordinary kdzoo run that never reads the test split.

A trial draws its settings from the space (TPE), trains ``--trial-epochs`` epochs with them in
``<tune folder>/trials/trial-NNNN`` (config.yaml, metrics.jsonl, summary.json: ``kdzoo report``
and ``kdzoo plot`` read it like any run), reports the validation top-1 after every epoch (the
pruner may stop it there), and scores the best validation top-1 of its epochs. The test split is
never evaluated (``evaluate_test=false``), the teacher is checked on validation.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..engine import SharedParts, fit, read_metrics
from ..engine.guard import NonFiniteError
from ..layers import nest
from ..errors import ConfigError, KdzooError
from ..spec import resolve_config
from .space import Space, describe, shown
from .study import (counted_trials, default_storage, load_study, make_pruner, make_sampler,
                    open_storage,
                    optuna_module, owner, recover_interrupted, redacted)

log = logging.getLogger("kdzoo")


@dataclass(frozen=True)
class RunLayers:
    """A run's settings as ``kdzoo train`` takes them: config file, flags, ``--set``."""

    config_file: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    assignments: tuple[str, ...] = ()

    def resolve(self, on_top: dict[str, Any] | None = None) -> TrainConfig:
        return resolve_config(self.config_file, self.overrides, list(self.assignments), on_top)


@dataclass(frozen=True)
class TuneSettings:
    """One ``kdzoo tune``: the run to tune, the space, the budget, where the study lives."""

    run: RunLayers
    space: Space
    out: Path
    n_trials: int = 20
    trial_epochs: int | None = None  # None: the run's epochs
    timeout: float | None = None     # seconds after which no new trial starts
    study_name: str | None = None
    storage: str | None = None       # None: sqlite in ``out``
    pruner: str = "median"
    final_seeds: int = 3
    sampler_seed: int | None = None  # None: from the run's seed (see :func:`sampler_seed`)
    progress: bool | None = False


def study_name(config: TrainConfig) -> str:
    teacher = f"{config.teacher.name}-" if config.teacher.name else ""
    return f"{config.method.name}-{teacher}{config.student.name}-{config.data.name}"


def trial_epochs(settings: TuneSettings, base: TrainConfig) -> int:
    return settings.trial_epochs or base.optim.epochs


def identity(settings: TuneSettings, base: TrainConfig) -> dict[str, Any]:
    """What a study searches: the space, the trials' epochs and the other result settings of
    its runs (the searched keys left out), as strings and numbers (a JSON user attribute)."""
    fixed = {k: v for k, v in base.result_settings().items() if k not in settings.space}
    fixed["optim.epochs"] = trial_epochs(settings, base)
    digest = hashlib.sha256(repr(sorted(fixed.items())).encode()).hexdigest()[:16]
    return {"space": describe(settings.space), "settings": digest,
            "method": base.method.name, "student": base.student.name,
            "teacher": base.teacher.name, "data": base.data.name,
            "trial_epochs": fixed["optim.epochs"]}


def sampler_seed(settings: TuneSettings, base: TrainConfig, existing: int, worker: int) -> int:
    """The TPE sampler's seed: given, or from the run's seed, the trials the study already
    holds and this worker's index (reproducible for one process); with a storage given
    (processes that may share the study), the process id too, so that two processes do not
    draw the same settings."""
    if settings.sampler_seed is not None:
        return settings.sampler_seed + worker
    parts = (base.seed, existing, worker, os.getpid() if settings.storage else 0)
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:8], 16)


def check_bounds(settings: TuneSettings) -> None:
    """Resolve a run at each end of every range (each choice of a categorical), so a value the
    run refuses (a negative weight, a temperature of 0) is one line before any trial runs."""
    for key, distribution in settings.space.items():
        for value in distribution.bounds():
            try:
                settings.run.resolve(nest({key: value}))
            except ConfigError as exc:
                raise ConfigError(f"search space {key}={distribution.text()}: the value "
                                  f"{value!r} is refused ({exc})") from None


def trial_config(settings: TuneSettings, values: dict[str, Any], run_dir: Path) -> TrainConfig:
    """A trial's run spec: the run's settings, the drawn values on top, the trials' epochs,
    the test split never read."""
    on_top = {**nest(values), "evaluate_test": False, "out": str(run_dir)}
    if settings.trial_epochs is not None:
        on_top.setdefault("optim", {})["epochs"] = settings.trial_epochs
    return settings.run.resolve(on_top)


class Search:
    """Runs trials of one study until it holds ``n_trials`` (or ``timeout`` passes)."""

    def __init__(self, settings: TuneSettings, base: TrainConfig, worker: int = 0) -> None:
        self.settings = settings
        self.base = base
        self.optuna = optuna_module()
        self.storage_url = settings.storage or default_storage(settings.out)
        storage = open_storage(self.storage_url)
        self.name = settings.study_name or study_name(base)
        epochs = trial_epochs(settings, base)
        existing = _trial_count(self.optuna, storage, self.name)
        sampler = make_sampler(sampler_seed(settings, base, existing, worker), settings.n_trials)
        self.study = load_study(storage, self.name, sampler, make_pruner(settings.pruner, epochs),
                                identity(settings, base))
        self.shared = SharedParts()

    def run(self) -> Any:
        """Trials until the study has its ``n_trials``; returns the study."""
        recover_interrupted(self.study)
        started = time.monotonic()
        while counted_trials(self.study) < self.settings.n_trials:
            self.run_trial()
            if self.settings.timeout is not None and \
                    time.monotonic() - started > self.settings.timeout:
                log.info("--timeout reached after %.0f s: no new trial started",
                         time.monotonic() - started)
                break
        return self.study

    def run_trial(self) -> None:
        """Ask the study for a trial, train it, tell the study how it ended."""
        state = self.optuna.trial.TrialState
        trial = self.study.ask()
        trial.set_user_attr("owner", owner())
        values = {key: dist.suggest(trial, key) for key, dist in self.settings.space.items()}
        run_dir = Path(trial.user_attrs.get("run_dir") or
                       self.settings.out / "trials" / f"trial-{trial.number:04d}")
        trial.set_user_attr("run_dir", str(run_dir))
        try:
            value = self.train(trial, trial_config(self.settings, values, run_dir), values)
        except self.optuna.TrialPruned:
            log.info("trial %d pruned", trial.number)
            self.study.tell(trial, state=state.PRUNED)
        except NonFiniteError as exc:  # diverged: a finished trial, scored as failed
            trial.set_user_attr("error", str(exc))
            log.info("trial %d failed: %s", trial.number, exc)
            self.study.tell(trial, state=state.FAIL)
        except KdzooError as exc:  # bad input: the trial failed, and so does the search
            trial.set_user_attr("error", str(exc))
            self.study.tell(trial, state=state.FAIL)
            raise
        except BaseException:  # interrupted (Ctrl-C) or broken: the next trial continues it
            trial.set_user_attr("interrupted", True)
            self.study.tell(trial, state=state.FAIL)
            self.study.enqueue_trial(trial.params, user_attrs={
                "continues": trial.number, "run_dir": str(run_dir)})
            raise
        else:
            log.info("trial %d: best val top-1 %.2f%%", trial.number, value)
            self.study.tell(trial, value)

    def train(self, trial: Any, config: TrainConfig, values: dict[str, Any]) -> float:
        """Train a trial's run (continuing an interrupted one's run folder), reporting each
        epoch's validation top-1 to the pruner; returns the best validation top-1."""
        run_dir = Path(config.out or "")
        resume = (run_dir / "checkpoint.pt").is_file()
        drawn = ", ".join(f"{k}={shown(v)}" for k, v in values.items())
        log.info("trial %d: %s%s", trial.number, drawn,
                 f" (continues trial {trial.user_attrs['continues']})" if resume else "")
        if resume:
            for record in read_metrics(run_dir):  # the epochs done before the interruption
                if "val" in record:
                    trial.report(record["val"]["top1"], record["epoch"])

        def report(record: dict[str, Any]) -> None:
            if "val" not in record:
                return  # an initialisation stage's epoch: no evaluation
            trial.report(record["val"]["top1"], record["epoch"])
            last = record["stage"] == "main" and record["stage_epoch"] == config.optim.epochs
            if not last and trial.should_prune():  # a finished trial is scored, not pruned
                raise self.optuna.TrialPruned()

        result = fit(config, resume=resume, overwrite=not resume,
                     progress=self.settings.progress, shared=self.shared, on_epoch=report)
        value = result.summary["best_val_top1"]
        if value is None or not math.isfinite(value):
            raise KdzooError(f"trial {trial.number} recorded no validation accuracy")
        return float(value)


def _trial_count(optuna: Any, storage: Any, name: str) -> int:
    try:
        return len(optuna.load_study(study_name=name, storage=storage).trials)
    except KeyError:  # a new study
        return 0



def tuned_record(study: Any, storage: str, space: Space, trial: Any,
                 epochs: int) -> dict[str, Any]:
    """What a run trained with a trial's settings records of them (config ``tuned``)."""
    return {"study": study.study_name, "storage": redacted(storage), "trial": trial.number,
            "val_top1": trial.value, "params": dict(trial.params), "space": describe(space),
            "trials": len(study.trials), "trial_epochs": epochs}


__all__ = ["RunLayers", "Search", "TuneSettings", "check_bounds", "study_name", "trial_config",
           "tuned_record"]
