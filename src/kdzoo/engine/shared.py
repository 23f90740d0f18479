"""Parts of a run that several runs in one process can share.

A grid run in one process (``kdzoo zoo``, ``kdzoo demo``) builds many runs over the same
dataset and the same teachers, and the tests build every method on the same pairs. What depends
only on part of the spec, and never changes once made, is made once: the loaded dataset (by its
data settings), each frozen network with its calibrated BatchNorms (by its model, checkpoint,
dataset, seed, batch size, device, precision and layout), and its fast-path module (BatchNorms
folded, :func:`~kdzoo.engine.teacher.fast_module`). Trained networks (students, peers) are
always built anew: they change.

A frozen network's checkpoint file is keyed by its path, size and modification time, so a
teacher retrained in between (a grid's teacher run) is loaded again.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, TypeVar

import torch
from torch import nn

from ..config import TrainConfig
from ..models import FeatureNet
from .teacher import fast_module

T = TypeVar("T")


def _file_stamp(path: str | None) -> Any:
    if path is None or not os.path.isfile(path):
        return path
    stat = os.stat(path)
    return [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]


def data_key(config: TrainConfig) -> str:
    """What the run's dataset depends on: the data section (where the files are included)."""
    section = config.to_dict()["data"]
    return json.dumps(section, sort_keys=True, default=str)


def frozen_key(config: TrainConfig, source: str, device: torch.device) -> str:
    """What a frozen network named by the config section ``source`` depends on, once built,
    moved and calibrated."""
    section = config.to_dict()[source]
    return json.dumps({
        "model": {**section, "checkpoint": _file_stamp(section.get("checkpoint"))},
        "data": data_key(config), "seed": config.seed, "batch": config.optim.batch_size,
        "device": str(device), "precision": config.precision,
        "channels_last": config.channels_last, "trust": config.trust_checkpoint,
    }, sort_keys=True, default=str)


class SharedParts:
    """The parts runs built in this process share (see the module docstring); pass one to
    :func:`~kdzoo.engine.build` (or :func:`~kdzoo.engine.fit`) for every run."""

    def __init__(self) -> None:
        self._found: dict[tuple[str, str], Any] = {}
        self._folded: dict[tuple[int, bool, torch.memory_format], nn.Module] = {}

    def get(self, kind: str, key: str, make: Callable[[], T]) -> T:
        """The part ``kind`` with ``key``, made by ``make`` the first time."""
        if (kind, key) not in self._found:
            self._found[kind, key] = make()
        return self._found[kind, key]

    def fast_module(self, teacher: FeatureNet, fold_bn: bool,
                    memory_format: torch.memory_format) -> nn.Module:
        """``teacher``'s fast-path module, folded once per shared frozen network."""
        key = (id(teacher), fold_bn, memory_format)
        if key not in self._folded:
            self._folded[key] = fast_module(teacher, fold_bn, memory_format)
        return self._folded[key]
