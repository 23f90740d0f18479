"""A run's checkpoint: its format, and the check that a resumed run is the same run.

:meth:`Trainer.state_dict <kdzoo.engine.trainer.Trainer.state_dict>` holds everything that
decides what happens next (networks, method, optimisers, stage and epoch counters, torch's RNG
states, the metrics history); the data order needs no saving, it is a pure function of (seed,
epoch), see :mod:`kdzoo.data.loader`. A run may be resumed with other settings that cannot
change its result (``data_dir``, ``device``, threads, logging, ...; see
:func:`kdzoo.config.changes_result`); one that changes a result is refused with the differing
keys.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import yaml

from ..config import TrainConfig
from ..errors import KdzooError
from ..models.checkpoint import read_checkpoint_file
from ..spec import result_differences
from .rundir import CHECKPOINT, CONFIG

RUN_FORMAT = "kdzoo-run/1"


def check_same_run(folder: Path, saved: Mapping[str, Any], config: TrainConfig) -> None:
    """Refuse to continue the run in ``folder`` (recorded with config ``saved``) under a config
    that would change its result."""
    differences = result_differences(saved, config)
    if differences:
        raise KdzooError(
            f"cannot resume {folder}: this config differs from the run's in "
            f"{'; '.join(differences)}; rerun with the run's settings (see its {CONFIG}) or "
            "start a new run with another --out")


def check_resume_config(folder: Path, config: TrainConfig) -> None:
    """The check against the folder's config.yaml, before anything is built or written."""
    try:
        saved = yaml.safe_load((folder / CONFIG).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        raise KdzooError(f"cannot resume {folder}: its {CONFIG} is missing or unreadable") from None
    check_same_run(folder, saved or {}, config)


def read_run_state(folder: Path) -> dict[str, Any] | None:
    """The folder's checkpoint (None when the run stopped before its first one)."""
    path = folder / CHECKPOINT
    if not path.is_file():
        return None
    state = read_checkpoint_file(path)
    if not isinstance(state, dict) or state.get("kdzoo_format") != RUN_FORMAT:
        raise KdzooError(f"{path} is not a kdzoo run checkpoint; cannot resume from it")
    return state
