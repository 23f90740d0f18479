"""The study: Optuna's RDB storage, its settings, and trials left behind by a killed process.

A study lives in an SQLAlchemy database (default: ``sqlite:///<tune folder>/study.db``); any
URL Optuna accepts (``postgresql://...``) lets processes on several machines share one study.
The study records, as user attributes, what it searches (the space) and the result settings of
its runs, so a second process, or a rerun, can join it only with the same search.

A trial is RUNNING while a process trains it. A process killed mid-trial leaves it RUNNING;
when a process on the same machine finds such a trial whose process is gone, it marks it
failed ("interrupted") and enqueues the same parameters again, with the trial's run folder, so
the next trial continues that run from its last checkpoint instead of starting over.
"""
from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

from ..errors import ConfigError, KdzooError

log = logging.getLogger("kdzoo")

PRUNERS = ("median", "hyperband", "successive-halving", "none")
DB_FILE = "study.db"


def optuna_module() -> Any:
    """Optuna, or one line saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise KdzooError('kdzoo tune needs Optuna: pip install "kdzoo[tune]"') from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # kdzoo's log says what happens
    return optuna


def default_storage(folder: Path) -> str:
    return f"sqlite:///{(folder / DB_FILE).resolve()}"


def redacted(url: str) -> str:
    """The storage URL without its password (what logs and summaries record)."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"


def open_storage(url: str) -> Any:
    """Optuna's RDB storage at ``url``, or one line saying why it cannot be reached."""
    optuna = optuna_module()
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as exc:  # SQLAlchemy/driver errors of every kind: one line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot open the study storage {redacted(url)}: {reason[:200]}; "
                          "check --storage (an SQLAlchemy URL such as "
                          "sqlite:///study.db or postgresql://user@host/db)") from None


def make_sampler(seed: int, n_trials: int) -> Any:
    """TPE, with as many random trials first as a third of the budget allows (3 to 10; Optuna's
    default of 10 would leave a 10-trial study random throughout)."""
    return optuna_module().samplers.TPESampler(
        seed=seed, n_startup_trials=max(3, min(10, n_trials // 3)))


def make_pruner(name: str, trial_epochs: int) -> Any:
    optuna = optuna_module()
    if name == "median":
        # A trial below the median of the earlier trials at the same epoch stops, from the
        # second half of its epochs on (the first epochs, at the highest learning rate, are
        # too noisy to judge), once three trials have finished.
        return optuna.pruners.MedianPruner(n_startup_trials=3,
                                           n_warmup_steps=(trial_epochs + 1) // 2)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=trial_epochs)
    if name == "successive-halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"unknown pruner '{name}'; pruners: {', '.join(PRUNERS)}")


def load_study(storage: Any, name: str, sampler: Any, pruner: Any,
               identity: dict[str, Any]) -> Any:
    """The study ``name`` in ``storage`` (created when new), refused when it searches something
    else than ``identity`` says (its space and the result settings of its runs)."""
    optuna = optuna_module()
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                pruner=pruner, direction="maximize", load_if_exists=True)
    saved = study.user_attrs.get("identity")
    if saved is None:
        study.set_user_attr("identity", identity)
    elif saved != identity:
        changed = sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k))
        raise ConfigError(f"study '{name}' in this storage searches other settings "
                          f"({', '.join(changed)} differ): choose another --study-name or "
                          "--out, or rerun with the study's own settings")
    return study


def owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _is_orphan(trial: Any) -> bool:
    """A RUNNING trial whose process, on this machine, is gone."""
    who = trial.user_attrs.get("owner") or {}
    if who.get("host") != socket.gethostname():
        return False  # another machine's: it may well be running
    pid = who.get("pid")
    return pid == os.getpid() or not isinstance(pid, int) or not _alive(pid)


def recover_interrupted(study: Any) -> int:
    """Mark this machine's orphaned RUNNING trials failed ("interrupted") and enqueue their
    parameters again, with their run folder, to continue them; returns how many."""
    optuna = optuna_module()
    state = optuna.trial.TrialState
    found = 0
    for trial in study.get_trials(deepcopy=False, states=(state.RUNNING,)):
        if not _is_orphan(trial):
            continue
        study._storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
        study.tell(trial.number, state=state.FAIL, skip_if_finished=True)
        study.enqueue_trial(trial.params, user_attrs={
            "continues": trial.number, "run_dir": trial.user_attrs.get("run_dir")},
            skip_if_exists=False)
        log.info("trial %d was interrupted: its run continues in a new trial", trial.number)
        found += 1
    return found


def counted_trials(study: Any) -> int:
    """Trials that count towards ``--n-trials``: finished (complete, pruned, failed for a
    reason of their own) or running; an interrupted trial does not (its continuation does)."""
    state = optuna_module().trial.TrialState
    count = 0
    for trial in study.get_trials(deepcopy=False):
        if trial.state == state.WAITING:
            continue
        if trial.state == state.FAIL and trial.user_attrs.get("interrupted"):
            continue
        count += 1
    return count
