"""The interface every distillation method implements.

A method is a small ``nn.Module``. It declares

* the networks it uses and their roles (``roles``: a trainable student and a frozen teacher by
  default; none but the student for the baseline; a trainable peer for mutual learning);
* what it asks of them (``needs`` / ``teacher_needs``: relative :class:`FeatureRequest`\\ s such
  as "the last three stages after ReLU" or "the pooled feature"; the engine refuses, in one line
  and before anything is written, a network that cannot serve them);
* its hyper-parameters, as a frozen dataclass subclassing :class:`MethodParams`, given once as
  the type argument of its base (``class KD(LogitMethod[KDParams])``), which sets the class's
  ``Params`` and types ``self.params`` (validated before any data is loaded; the effective
  values, defaults included, are recorded in the run),

owns its trainable parts (connectors, embeddings, memory banks), and returns a dict of named,
already weighted loss terms from ``forward(features, step)``, ``features`` holding every role's
features of the batch by role name. It never computes the cross-entropy or runs a network
itself: the loop runs every role once per batch, adds a cross-entropy term per trainable role,
and steps the optimisers of the trainable roles (the method's parameters are found by
``parameters()``, so a method cannot forget to register a connector).

Methods that need more declare it and the loop provides it, without a branch per method name:

* ``stages()`` -- multi-stage training (FSP/AB initialisation, FT's paraphraser);
* ``Step.epoch``/``Step.stage`` -- per-epoch schedules (BSS's weight decay);
* ``Step.batch.indices`` -- dataset indices (CRD's memory bank);
* ``Step.run(role, images)`` -- a role's features on other inputs, run by the loop (MLKD's
  strong view, BSS's adversarial samples and attack);
* ``Step.networks`` / ``MethodContext.networks`` -- every role's network, to read its parts
  (classifier weights, BatchNorm statistics), never to call it;
* ``needs_input_grad`` -- input images that require grad (Sobolev, LwM);
* ``Step.generator(name)`` -- random numbers that depend only on (seed, stage, epoch, step), so
  a resumed run draws exactly what the uninterrupted run drew.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Iterator, Mapping, TypeVar

from torch import Tensor, nn

from ..config import MethodParams
from ..core import STUDENT, TEACHER, Role, Stage, Step
from ..errors import ConfigError
from ..models.features import FeatureInfo, FeatureRequest, Features


def positive(method: str, **values: float) -> None:
    """One line for the first of ``values`` that is not positive."""
    for key, value in values.items():
        if not value > 0:
            raise ConfigError(f"method {method}: {key} must be positive, got {value}")


def non_negative(method: str, **values: float) -> None:
    """One line for the first of ``values`` (loss weights) that is negative."""
    for key, value in values.items():
        if not value >= 0:
            raise ConfigError(f"method {method}: {key} must be non-negative, got {value}")


P = TypeVar("P", bound=MethodParams)


@dataclass
class MethodContext:
    """What a method may know when it is built: the feature metadata of every role's network
    (``infos``, by role name) and the training data's shape. Connectors are sized from this
    metadata, never from a dummy forward."""

    infos: Mapping[str, FeatureInfo]
    num_classes: int
    image_size: int
    in_chans: int
    train_labels: Tensor  # (N,) labels of the training split, e.g. for CRD's negatives
    data_name: str = ""   # the dataset's registry name (FT's BatchNorm rule depends on it)
    seed: int = 0
    #: every role's network, built (frozen teachers frozen): for methods that reuse or read a
    #: part of one (SimKD deploys the teacher's classifier), never to run a dummy forward
    networks: Mapping[str, nn.Module] = dataclasses.field(default_factory=dict)


class Method(nn.Module, Generic[P]):
    """Base class of every distillation method (see the module docstring), generic in the type
    of its hyper-parameters: ``class FitNet(Method[FitNetParams])`` sets ``FitNet.Params``."""

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""    # "Title", Authors, Venue Year
    url: ClassVar[str] = ""
    #: the hyper-parameters' dataclass, from the type argument (``__init_subclass__``)
    Params: ClassVar[type[MethodParams]] = MethodParams
    params: P
    #: the networks this method uses, with their roles
    roles: ClassVar[tuple[Role, ...]] = (STUDENT, TEACHER)
    #: features asked of the student and, unless ``teacher_needs`` says otherwise, of every
    #: other role (the logits always come with them)
    needs: ClassVar[FeatureRequest] = FeatureRequest()
    teacher_needs: ClassVar[FeatureRequest | None] = None
    #: the input images require grad and the teacher runs with autograd (Sobolev, LwM)
    needs_input_grad: ClassVar[bool] = False
    #: False for methods that run the teacher on other inputs (``Step.run``: BSS attacks it):
    #: its outputs for the training views are then not all the method needs
    teacher_cacheable: ClassVar[bool] = True

    @property
    def views(self) -> tuple[str, ...]:
        """Extra augmented views of each batch the method needs (``Batch.views``): names of
        :data:`kdzoo.data.loader.EXTRA_VIEWS` (MLKD's paper protocol asks for "strong")."""
        return ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in cls.__dict__.get("__orig_bases__", ()):
            args = typing.get_args(base)
            if args and isinstance(args[0], type) and issubclass(args[0], MethodParams):
                cls.Params = args[0]

    def __init__(self, ctx: MethodContext, params: P) -> None:
        super().__init__()
        self.ctx = ctx
        self.params = params
        self.requests = self.feature_requests(params, ctx.infos)

    # ---------------------------------------------------------------------- declarations
    @classmethod
    def frozen_roles(cls) -> tuple[Role, ...]:
        return tuple(r for r in cls.roles if not r.trainable)

    @classmethod
    def trainable_roles(cls) -> tuple[Role, ...]:
        return tuple(r for r in cls.roles if r.trainable)

    @classmethod
    def feature_requests(cls, params: P,
                         infos: Mapping[str, FeatureInfo]) -> dict[str, FeatureRequest]:
        """The resolved request of every role ("all" stages become the positions every network
        has, aligned from the end). Override when the request depends on ``params``."""
        resolved = {}
        for role in cls.roles:
            request = cls.needs if role.name == "student" or cls.teacher_needs is None \
                else cls.teacher_needs
            resolved[role.name] = request.resolve(*(infos.get(r.name) for r in cls.roles))
        return resolved

    @classmethod
    def every_stage_requests(cls,
                             infos: Mapping[str, FeatureInfo]) -> dict[str, FeatureRequest]:
        """Every role asks for all the stages every network has (aligned from the end): what
        RepDistiller's variants of AT and NST compare."""
        request = FeatureRequest(stages="all").resolve(*(infos.get(r.name) for r in cls.roles))
        return {role.name: request for role in cls.roles}

    @classmethod
    def can_use_teacher_cache(cls) -> bool:
        """Whether the frozen teacher's logits on each training view are all this method needs
        (then they can come from the on-disk teacher cache)."""
        frozen = cls.frozen_roles()
        if len(frozen) != 1 or not cls.teacher_cacheable or cls.needs_input_grad:
            return False
        request = cls.teacher_needs or cls.needs
        return request == FeatureRequest()

    # --------------------------------------------------------------------------- the run
    def stages(self, main: Stage) -> list[Stage]:
        """The stages to run; ``main`` is the run's configured schedule. Default: just it, with
        the cross-entropy weighted by the method's ``ce_weight`` hyper-parameter when it has
        one (KD's 0.1 in RepDistiller's and mdistiller's convention)."""
        ce_weight = getattr(self.params, "ce_weight", None)
        return [main if ce_weight is None else dataclasses.replace(main, ce_weight=ce_weight)]

    def end_stage(self, stage: Stage) -> None:
        """Called after a stage's last epoch (e.g. to freeze a pre-trained part)."""

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        """Named, weighted loss terms for one batch (the cross-entropy is added by the loop).
        ``features`` holds every role's features of the batch by role name ("student",
        "teacher", "peer"); "student" is absent only in stages with ``uses_student=False``."""
        raise NotImplementedError

    def stage_pairs(self, features: Mapping[str, Features],
                    role: str = "teacher") -> list[tuple[Tensor, Tensor]]:
        """(student map, ``role``'s map) for every requested stage, aligned from the end."""
        mine, theirs = self.requests["student"], self.requests[role]
        return list(zip(features["student"].maps(mine.positions, mine.preact),
                        features[role].maps(theirs.positions, theirs.preact)))

    def deployed(self, role: str, network: nn.Module) -> nn.Module:
        """``role``'s network as it is evaluated and exported: the network itself, or (SimKD)
        the network with the method's parts that belong to the deployed model."""
        return network

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.parameters() if p.requires_grad)
