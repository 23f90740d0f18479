"""What a run's checkpoint holds, and how a run is restored from it.

Everything that decides what happens next is saved: student, method (connectors, memory
banks), optimisers (momentum), stage and epoch counters, torch's RNG states and the metrics
history. The data order needs no saving: it is a pure function of (seed, epoch), see
:mod:`kdzoo.data.loader`.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from ..config import config_from_dict, flatten
from ..errors import KdzooError
from ..models.checkpoint import read_checkpoint_file
from .records import upgrade_record
from .rundir import CHECKPOINT, CONFIG

if TYPE_CHECKING:
    from .trainer import Trainer

RUN_FORMAT = "kdzoo-run/1"
#: config keys that may differ between a run and its resumption (they do not change results)
RUNTIME_KEYS = {"device", "out", "log_interval", "eval_batch_size", "trust_checkpoint",
                "tensorboard"}


def run_state(trainer: "Trainer", wall_seconds: float) -> dict[str, Any]:
    parts = trainer.parts
    optimizers = dict(trainer.saved_optimizer_states)
    optimizers.update({name: opt.state_dict() for name, opt in trainer.optimizers.items()})
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        "kdzoo_format": RUN_FORMAT,
        "config": parts.config.to_dict(),
        "stage_index": trainer.stage_index,
        "stage_epoch": trainer.stage_epoch,
        "global_epoch": trainer.global_epoch,
        "networks": {role.name: parts.networks[role.name].state_dict()
                     for role in parts.method.trainable_roles()},
        "method": parts.method.state_dict(),
        "optimizers": optimizers,
        "rng": rng,
        "history": trainer.history,
        "wall_seconds": wall_seconds,
        "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
    }


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key (saved -> current)`` for every result-changing key that differs."""
    old, new = flatten(saved), flatten(current)
    keys = sorted(set(old) | set(new))
    return [f"{k} ({old.get(k)!r} in the run, {new.get(k)!r} now)" for k in keys
            if k not in RUNTIME_KEYS and old.get(k) != new.get(k)]


def _with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config with today's defaults for keys it lacks (added by a newer kdzoo, including
    method hyper-parameters an older kdzoo did not record), so an upgrade does not block
    resuming; an invalid saved config is compared as it is."""
    from .build import effective_config

    try:
        return effective_config(config_from_dict(saved)).to_dict()
    except KdzooError:
        return saved


def check_resume_config(folder: Path, config: dict[str, Any]) -> None:
    """Refuse to resume a run whose recorded config differs (before anything is written)."""
    path = folder / CONFIG
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        raise KdzooError(f"cannot resume {folder}: its {CONFIG} is missing or unreadable") from None
    differences = config_differences(_with_defaults(saved or {}), config)
    if differences:
        raise KdzooError(
            f"cannot resume {folder}: this config differs from the run's in "
            f"{'; '.join(differences)}; rerun with the run's settings (see its {CONFIG}) or "
            "start a new run with another --out"
        )


def load_run_state(trainer: "Trainer") -> bool:
    """Restore ``trainer`` from its run folder's checkpoint (the config must match); False when
    the run was stopped before its first checkpoint, so it starts from the beginning."""
    parts, path = trainer.parts, trainer.run / CHECKPOINT
    if not path.is_file():
        return False
    state = read_checkpoint_file(path)
    if not isinstance(state, dict) or state.get("kdzoo_format") != RUN_FORMAT:
        raise KdzooError(f"{path} is not a kdzoo run checkpoint; cannot resume from it")
    differences = config_differences(_with_defaults(state["config"]), parts.config.to_dict())
    if differences:
        raise KdzooError(
            f"cannot resume {trainer.run.path}: this config differs from the run's in "
            f"{'; '.join(differences)}; rerun with the run's settings (see its config.yaml) or "
            "start a new run with another --out"
        )
    networks = state.get("networks")
    if networks is None:  # written by kdzoo 0.1: the student, and DML's peer under "peer"
        networks = {"student": state["student"]}
        if state.get("peer") is not None:
            networks["peer"] = state["peer"]
    for name, weights in networks.items():
        parts.networks[name].load_state_dict(weights)
    parts.method.load_state_dict(state["method"])
    trainer.saved_optimizer_states = dict(state["optimizers"])
    trainer.stage_index = state["stage_index"]
    trainer.stage_epoch = state["stage_epoch"]
    trainer.global_epoch = state["global_epoch"]
    trainer.history = [upgrade_record(r) for r in state["history"]]
    trainer.wall_before = float(state["wall_seconds"])
    if state.get("scaler") is not None and trainer.scaler is not None:
        trainer.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    for stage in parts.stages[: trainer.stage_index]:
        parts.method.end_stage(stage)  # re-apply what finishing a stage did (e.g. freezing)
    trainer.run.write_metrics(trainer.history)  # drop lines written after the checkpoint
    return True
