"""A run is a folder: the resolved config, per-epoch metrics, the summary, the exported student
and a checkpoint to resume from. This module decides what may be written where (an existing run
is never overwritten unless the user asks, ``--overwrite``, or continues it, ``--resume``), and
:class:`RunDir` is the one writer of a run's files (the recorder): the training loop knows no
file. :class:`NullRecorder` writes nothing (benchmarks; processes other than rank 0)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import KdzooError
from ..io import atomic_torch_save, atomic_write_json, atomic_write_text

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
STUDENT = "student.pt"
PEER = "peer.pt"
CHECKPOINT = "checkpoint.pt"
LOG = "log.txt"
RUN_FILES = (CONFIG, METRICS, SUMMARY, STUDENT, PEER, CHECKPOINT, LOG)


class RunDir:
    """Paths and writers of one run folder: config, metrics (and TensorBoard events, when
    asked), summary, checkpoint, exported networks."""

    def __init__(self, path: str | Path, tensorboard: bool = False) -> None:
        self.path = Path(path)
        self.tensorboard = tensorboard
        self._events: Any = None  # the TensorBoard SummaryWriter, opened at the first epoch

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @staticmethod
    def check(path: str | Path, resume: bool = False, overwrite: bool = False) -> None:
        """Refuse a folder we may not write to, before anything is built or written."""
        path = Path(path)
        if resume:
            # A run killed before its first checkpoint has only its config: it restarts.
            if not (path / CHECKPOINT).is_file() and not (path / CONFIG).is_file():
                raise KdzooError(f"nothing to resume in {path}: it holds no kdzoo run; start the "
                                 "run without --resume")
            return
        if path.exists() and not path.is_dir():
            raise KdzooError(f"output path {path} is a file, not a folder: choose another --out")
        if path.is_dir() and any(path.iterdir()) and not overwrite:
            raise KdzooError(
                f"output folder {path} already exists and is not empty: choose another --out, "
                "add --resume to continue the run in it, or --overwrite to replace its run files"
            )
        existing = next((p for p in [path, *path.parents] if p.exists()), None)
        if existing is not None and not existing.is_dir():
            raise KdzooError(f"cannot create output folder {path}: {existing} is a file; choose "
                             "another --out")
        if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
            raise KdzooError(f"cannot write to output folder {path} ({existing} is not writable):"
                             " choose another --out")

    @classmethod
    def prepare(cls, path: str | Path, resume: bool = False, overwrite: bool = False) -> "RunDir":
        """Create (or reopen) the folder; with ``overwrite``, remove only kdzoo's own files."""
        cls.check(path, resume, overwrite)
        run = cls(path)
        try:
            run.path.mkdir(parents=True, exist_ok=True)
            if overwrite and not resume:
                for name in RUN_FILES:
                    (run.path / name).unlink(missing_ok=True)
            with tempfile.TemporaryFile(dir=run.path):
                pass
        except OSError as exc:
            raise KdzooError(f"cannot write to output folder {path} ({exc.strerror or exc}): "
                             "choose another --out") from None
        return run

    def write_config(self, text: str) -> None:
        atomic_write_text(self / CONFIG, text)

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self / SUMMARY, summary)

    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        """Rewrite metrics.jsonl from the full history (atomic; used when resuming)."""
        atomic_write_text(self / METRICS, "".join(json.dumps(r) + "\n" for r in records))

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        atomic_torch_save(state, self / CHECKPOINT)

    def export(self, role: str, network: Any, **metadata: Any) -> None:
        """Write a trained network as ``<role>.pt`` (``student.pt``, ``peer.pt``)."""
        from ..models import export_model

        export_model(network, self / f"{role}.pt", **metadata)

    def record_epoch(self, record: dict[str, Any]) -> None:
        """Append an epoch's record to metrics.jsonl (and to the TensorBoard events)."""
        self.append_metrics(record)
        if self.tensorboard:
            from .events import write_events

            self._events = write_events(self._events, self.path, record)

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None

    def append_metrics(self, record: dict[str, Any]) -> None:
        try:
            with open(self / METRICS, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
                handle.flush()
        except OSError as exc:
            raise KdzooError(f"cannot append to {self / METRICS} ({exc.strerror or exc}); the "
                             "checkpoint of this epoch is saved: fix the disk and rerun with "
                             "--resume") from None


class NullRecorder(RunDir):
    """A recorder that writes nothing: the loop runs, its files do not appear (``kdzoo bench``;
    DDP ranks other than 0, which still read a checkpoint from ``path`` to resume)."""

    def __init__(self, path: str | Path | None = None) -> None:
        super().__init__(path or Path(tempfile.gettempdir()) / "kdzoo-null-recorder")

    def write_config(self, text: str) -> None:
        pass

    def write_summary(self, summary: dict[str, Any]) -> None:
        pass

    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        pass

    def append_metrics(self, record: dict[str, Any]) -> None:
        pass

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        pass

    def export(self, role: str, network: Any, **metadata: Any) -> None:
        pass


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run folder (or of a metrics.jsonl file)."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def read_summary(path: str | Path, missing_ok: bool = False) -> dict[str, Any] | None:
    """The summary of a run folder (or of a summary.json file); with ``missing_ok``, None where
    there is none or it cannot be read."""
    path = Path(path)
    if path.is_dir():
        path = path / SUMMARY
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        if missing_ok:
            return None
        raise


def run_status(path: str | Path) -> str:
    """"finished" (its summary says so), "interrupted" (a folder with a config, checkpoint or
    summary: ``--resume`` continues it) or "not started"."""
    folder = Path(path)
    summary = read_summary(folder, missing_ok=True)
    if summary is not None and summary.get("finished"):
        return "finished"
    if any((folder / name).is_file() for name in (CONFIG, CHECKPOINT, SUMMARY)):
        return "interrupted"
    return "not started"
