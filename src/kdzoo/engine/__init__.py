"""The one training loop, its run folder, checkpoints and evaluation."""
from .api import RunResult, default_out, fit
from .build import Components, build
from ..metrics import evaluate
from ..models.features import freeze
from .rundir import RunDir, read_metrics, read_summary, run_status
from .shared import SharedParts
from ..core import Cosine, MultiStep, Piecewise, build_schedule
from .trainer import Trainer

__all__ = [
    "Components",
    "Cosine",
    "MultiStep",
    "Piecewise",
    "RunDir",
    "RunResult",
    "SharedParts",
    "Trainer",
    "build",
    "build_schedule",
    "default_out",
    "evaluate",
    "fit",
    "freeze",
    "read_metrics",
    "read_summary",
    "run_status",
]
