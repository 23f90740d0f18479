"""Where kdzoo keeps its files and which device a run uses: the machine's side of a run, below
the engine and the teacher store (both use it)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import ConfigError


def default_cache_dir() -> Path:
    """``$KDZOO_CACHE``, else ``~/.cache/kdzoo``: teacher caches and the teacher store."""
    return Path(os.environ.get("KDZOO_CACHE", Path.home() / ".cache" / "kdzoo"))


def resolve_device(name: str) -> torch.device:
    """``auto`` (a CUDA GPU if there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``; a
    one-line ConfigError for an unknown device or a missing GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device '{name}': use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda was asked for but no CUDA GPU is available: use "
                          "--device cpu (or auto)")
    return device
