"""The loop's vocabulary, shared by methods and engine: the networks a method uses (roles), the
stages of a run, and what one training step hands a method besides the features.

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
    whose multiplier is 0 is not computed, except the cross-entropy, which by default stays in
    the graph so the classifier still receives zero gradients and weight decay, as in the
    reference zoo's initialisation stages; ``keep_zero_ce=False`` leaves a cross-entropy of
    weight 0 out, so the parameters only it reaches get no gradient and the optimiser leaves
    them untouched, as RepDistiller's initialisation stages, whose optimiser holds only the
    student's feature modules).
    Stages that name the same ``optimizer`` share one optimiser object, momentum buffers
    included; ``optimizer_settings`` overrides lr/momentum/nesterov/weight_decay for a new one.
    ``trainable`` picks the parameters: "student+method" (default) or "method". A stage with
    ``uses_student=False`` (FT's paraphraser pre-training) does not run the student at all, so
    the student's BatchNorm statistics stay untouched; the features the method gets then have
    no "student" entry.
    """

    name: str
    epochs: int
    schedule: "LRSchedule | None" = None  # None: the run's main schedule
    ce_weight: float = 1.0
    method_weight: float = 1.0
    keep_zero_ce: bool = True
    optimizer: str = "main"
    optimizer_settings: dict[str, Any] = field(default_factory=dict)
    trainable: str = "student+method"
    evaluate: bool = True
    uses_student: bool = True


#: How the loop runs a role's network on other inputs: ``run(role, images, input_grad)``.
RoleRunner = Callable[[str, "Tensor", bool], "Features"]


@dataclass
class Step:
    """What the loop hands a method for one training batch, besides the features of every role
    on it: the batch, where the run is (stage, 1-based epoch within the stage, 0-based step
    within the epoch), the run's seed and every role's network in ``networks``.

    ``networks`` is for reading a network's parts (a classifier's weight, a BatchNorm's
    statistics), never for calling a whole network: a method that needs a role's features on
    other inputs (an extra view, adversarial images) asks :meth:`run`, so the step module runs
    the network (its compiled forward, seen by DDP) or the frozen teacher's fast path."""

    batch: "Batch"
    stage: Stage
    epoch: int
    step: int
    seed: int = 0
    networks: Mapping[str, nn.Module] = field(default_factory=dict)
    #: the step module's runner behind :meth:`run` (None: run ``networks[role]`` directly)
    _run: RoleRunner | None = field(default=None, repr=False, compare=False)

    def run(self, role: str, images: "Tensor", *, input_grad: bool = False) -> "Features":
        """The features of ``role`` on ``images``. In training: a trainable role's forward as
        the step module runs it (with autograd); a frozen role's fast inference path (no
        autograd), or with ``input_grad`` its network with autograd, so gradients flow to
        ``images`` (BSS's attack). A ``Step`` built without a runner (tests) runs
        ``networks[role].features(images)``."""
        if self._run is not None:
            return self._run(role, images, input_grad)
        from ..models.features import FeatureNet

        network = self.networks[role]
        if not isinstance(network, FeatureNet):
            raise TypeError(f"Step.run: the {role}'s network is not a kdzoo FeatureNet")
        return network.features(images)

    def generator(self, name: str, device: torch.device | str = "cpu") -> torch.Generator:
        """A generator seeded from (run seed, name, stage, epoch, step): a resumed run draws
        exactly what the uninterrupted run drew."""
        gen = torch.Generator(device=device)
        gen.manual_seed(derive_seed(self.seed, name, self.stage.name, self.epoch, self.step))
        return gen
