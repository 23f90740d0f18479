"""The loop's vocabulary, shared by methods and engine: the networks a method uses (roles), the
stages of a run, and what one training step hands a method.

It sits below both: methods declare roles and stages with it, the engine runs them, and no
import points back up from methods to the engine.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch
from torch import nn

from ..seeding import derive_seed

if TYPE_CHECKING:
    from torch import Tensor

    from ..data.loader import Batch
    from ..models.features import Features
    from .schedule import LRSchedule


@dataclass(frozen=True)
class Role:
    """A network a method uses: its ``name`` (the key of its features and networks, the prefix of
    its logged terms, metrics and export file), whether it ``trainable`` (a trained peer) or a
    frozen teacher, and the config section that names its model (``source``)."""

    name: str
    trainable: bool
    source: str

    @property
    def prefix(self) -> str:
        """Prefix of this role's cross-entropy term, test metrics and summary fields
        ("" for the student, whose fields are unprefixed: ``ce``, ``test_top1``)."""
        return "" if self.name == "student" else f"{self.name}_"


STUDENT = Role("student", trainable=True, source="student")
TEACHER = Role("teacher", trainable=False, source="teacher")


@dataclass
class Stage:
    """One training stage, run by the one loop.

    ``ce_weight`` and ``method_weight`` multiply the cross-entropy and the method's terms (a term
    whose multiplier is 0 is not computed, except the cross-entropy, which stays in the graph so
    the classifier still receives zero gradients and weight decay, as in the reference).
    Stages that name the same ``optimizer`` share one optimiser object, momentum buffers
    included; ``optimizer_settings`` overrides lr/momentum/nesterov/weight_decay for a new one.
    ``trainable`` picks the parameters: "student+method" (default) or "method". A stage with
    ``uses_student=False`` (FT's paraphraser pre-training) does not run the student at all, so
    the student's BatchNorm statistics stay untouched; the method then gets ``student=None``.
    """

    name: str
    epochs: int
    schedule: "LRSchedule | None" = None  # None: the run's main schedule
    ce_weight: float = 1.0
    method_weight: float = 1.0
    optimizer: str = "main"
    optimizer_settings: dict[str, Any] = field(default_factory=dict)
    trainable: str = "student+method"
    evaluate: bool = True
    uses_student: bool = True


@dataclass
class Step:
    """What the loop hands a method for one training batch: the batch, where the run is (stage,
    1-based epoch within the stage, 0-based step within the epoch), the networks themselves
    (``student``, ``teacher``, and every role in ``networks``; BSS attacks the teacher) and the
    features of every role in ``features`` (a trained peer's, for mutual learning)."""

    batch: "Batch"
    stage: Stage
    epoch: int
    step: int
    student: nn.Module | None
    teacher: nn.Module | None
    seed: int = 0
    networks: Mapping[str, nn.Module] = field(default_factory=dict)
    features: Mapping[str, "Features"] = field(default_factory=dict)
    #: the frozen roles' fast inference paths (no autograd): ``frozen["teacher"](images)``
    #: gives the teacher's requested features for other inputs (e.g. an extra view)
    frozen: Mapping[str, Callable[["Tensor"], "Features"]] = field(default_factory=dict)

    def generator(self, name: str, device: torch.device | str = "cpu") -> torch.Generator:
        """A generator seeded from (run seed, name, stage, epoch, step): a resumed run draws
        exactly what the uninterrupted run drew."""
        gen = torch.Generator(device=device)
        gen.manual_seed(derive_seed(self.seed, name, self.stage.name, self.epoch, self.step))
        return gen
