"""The interface every distillation method implements.

A method is a small ``nn.Module``. It declares the feature points it needs, owns its trainable
parts (connectors, embeddings, memory banks), and returns a dict of named, already weighted loss
terms. It never computes the cross-entropy or runs the teacher: the training loop does both once
per batch, adds ``ce`` to the method's terms, and steps one optimiser over the student's and the
method's parameters (found by ``parameters()``: a method cannot forget to register a connector).

Methods that need more declare it and the loop provides it, without a branch per method name:

* ``stages()`` -- multi-stage training (FSP/AB initialisation, FT's paraphraser);
* ``Step.epoch``/``Step.stage`` -- per-epoch schedules (BSS's weight decay);
* ``Step.batch.indices`` -- dataset indices (CRD's memory bank);
* ``Step.student``/``Step.teacher`` -- the networks themselves (BSS attacks the teacher);
* ``needs_input_grad`` -- input images that require grad (Sobolev, LwM);
* ``Step.generator(name)`` -- random numbers that depend only on (seed, stage, epoch, step), so
  a resumed run draws exactly what the uninterrupted run drew.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Iterator

import torch
from torch import Tensor, nn

from ..models.features import FeatureInfo, Feats
from ..seeding import derive_seed

if TYPE_CHECKING:
    from ..data.loader import Batch
    from ..engine.schedule import LRSchedule


@dataclass
class MethodContext:
    """What a method may know when it is built: the feature points of both networks and the
    training data's shape. Connectors are sized from this metadata, never from a dummy forward."""

    student_info: dict[str, FeatureInfo]
    teacher_info: dict[str, FeatureInfo] | None
    num_classes: int
    image_size: int
    in_chans: int
    train_labels: Tensor  # (N,) labels of the training split, e.g. for CRD's negatives
    data_name: str = ""   # the dataset's registry name (FT's BatchNorm rule depends on it)
    seed: int = 0


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
    """What the loop hands a method for one training batch."""

    batch: "Batch"
    stage: Stage
    epoch: int  # 1-based, within the stage
    step: int   # 0-based, within the epoch
    student: nn.Module
    teacher: nn.Module | None
    seed: int = 0

    def generator(self, name: str, device: torch.device | str = "cpu") -> torch.Generator:
        """A generator seeded from (run seed, name, stage, epoch, step)."""
        gen = torch.Generator(device=device)
        gen.manual_seed(derive_seed(self.seed, name, self.stage.name, self.epoch, self.step))
        return gen


class Method(nn.Module):
    """Base class of every distillation method (see the module docstring)."""

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""    # "Title", Authors, Venue Year
    url: ClassVar[str] = ""
    #: feature points asked of student and teacher; the logits always come with them
    points: ClassVar[tuple[str, ...]] = ()
    #: points asked of the teacher when they differ from ``points``
    teacher_points: ClassVar[tuple[str, ...] | None] = None
    needs_teacher: ClassVar[bool] = True
    #: the input images require grad and the teacher runs with autograd (Sobolev, LwM)
    needs_input_grad: ClassVar[bool] = False
    #: the "teacher" is a peer trained together with the student (deep mutual learning): it is
    #: not frozen, trains in train mode with its own optimiser ("peer", same settings and
    #: schedule), gets its own cross-entropy term ``peer_ce``, and is evaluated and exported
    trains_teacher: ClassVar[bool] = False
    #: False for methods that run the teacher themselves (BSS attacks it): its outputs for the
    #: training views are then not all the method needs
    teacher_cacheable: ClassVar[bool] = True

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__()
        self.ctx = ctx

    @classmethod
    def required_teacher_points(cls) -> tuple[str, ...]:
        points = cls.points if cls.teacher_points is None else cls.teacher_points
        return tuple(dict.fromkeys((*points, "logits")))

    @classmethod
    def can_use_teacher_cache(cls) -> bool:
        """Whether the teacher's logits on each training view are all this method needs."""
        return (cls.needs_teacher and cls.teacher_cacheable and not cls.needs_input_grad
                and not cls.trains_teacher and cls.required_teacher_points() == ("logits",))

    @classmethod
    def required_student_points(cls) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*cls.points, "logits")))

    def stages(self, main: Stage) -> list[Stage]:
        """The stages to run; ``main`` is the run's configured schedule. Default: just it."""
        return [main]

    def end_stage(self, stage: Stage) -> None:
        """Called after a stage's last epoch (e.g. to freeze a pre-trained part)."""

    def forward(self, student: Feats | None, teacher: Feats | None,
                step: Step) -> dict[str, Tensor]:
        """Named, weighted loss terms for one batch (the cross-entropy is added by the loop).
        ``student`` is None only in stages with ``uses_student=False``."""
        raise NotImplementedError

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.parameters() if p.requires_grad)
