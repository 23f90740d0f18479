"""Crash-safe file writing.

Everything kdzoo writes that a user could lose (checkpoints, exported models, summaries) goes
through :func:`atomic_write`: the data is written to a temporary file in the same folder, flushed,
fsync'ed and renamed over the target, so a crash or a full disk mid-write leaves the previous file
intact instead of a truncated one.
"""
from __future__ import annotations

import errno
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import KdzooError


class DiskFullError(KdzooError):
    """The disk filled up during a write; the previous file is intact."""

    exit_status = 1


def atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Call ``write(fileobj)`` on a temporary file and atomically move it to ``path``."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(
                f"no space left on the device while writing {path}; the previous file is "
                "intact: free some disk space and rerun with --resume"
            ) from None
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not every platform/file system allows it.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    # Serialise in memory first: torch.save's zip writer reports a full disk as a vague
    # RuntimeError, while a plain file write raises OSError(ENOSPC), which we can name.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, lambda handle: handle.write(buffer.getbuffer()))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
