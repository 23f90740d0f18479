"""TensorBoard event files of a run (``--tensorboard``): every loss term, accuracy, learning rate
and timing of every epoch, under the same names as metrics.jsonl's groups (``terms/ce``,
``test/top1``, ``val/top1``, ``peers/peer/test/top1``, ``time/epoch_seconds``, ...)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from ..errors import ConfigError


def check_tensorboard() -> None:
    """A one-line error, before anything runs, when the tensorboard package is missing."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ConfigError('--tensorboard needs the tensorboard package: pip install '
                          '"kdzoo[tensorboard]" (or pip install tensorboard)') from None


def scalars(record: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """(tag, value) for every number of a metrics record (``epoch`` and ``stage_epoch`` are the
    step, not scalars)."""
    for key, value in record.items():
        tag = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from scalars(value, f"{tag}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and \
                key not in ("epoch", "stage_epoch"):
            yield tag, float(value)


def write_events(writer: Any, folder: Path, record: dict[str, Any]) -> Any:
    """Add the record's scalars at step ``record["epoch"]``; returns the (lazily opened)
    SummaryWriter, whose files go to ``folder/tensorboard``."""
    if writer is None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(folder / "tensorboard"))
    for tag, value in scalars(record):
        writer.add_scalar(tag, value, record["epoch"])
    writer.flush()
    return writer
