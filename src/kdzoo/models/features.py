"""The feature contract: what every kdzoo network offers and what a method may ask of it.

A network declares an ordered list of **stages** of any length (timm's ``feature_info`` is such a
list; mdistiller's and RepDistiller's models return ``feats`` lists), each with its channels, its
reduction (stride with respect to the input), whether its pre-activation output exists and,
where the network can name it, the BatchNorm before the stage's last ReLU (RepDistiller's
``get_bn_before_relu``, used for OFD's margin); plus the pooled feature, the logits and, where
one exists, the stem. One forward pass returns them all (:meth:`FeatureNet.forward_features`);
``model(x)`` returns the logits, as users expect.

A method asks *relatively* (:class:`FeatureRequest`): "the last k stages", "all stages",
pre- or post-activation, the pooled feature, the stem. Student and teacher are aligned by
position from the end, as RepDistiller aligns its cross-family pairs, so a method written for
the three-stage CIFAR ResNets works on four-stage networks too. What a network cannot give is
refused in one line (:func:`check_request`) before a run writes anything.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Literal

from torch import Tensor, nn

from ..errors import ConfigError

#: What ``FeatureNet.forward_features`` returns: ``{"stem": T, "stages": [T, ...],
#: "stages_pre": [T, ...], "pool": T, "logits": T}`` (a plain dict of tensors and lists, so
#: torch.fx, torch.compile and DistributedDataParallel handle it as it is).
RawFeatures = dict[str, Any]


@dataclass(frozen=True)
class StageInfo:
    """One stage of a network: ``channels`` of its output map, its ``reduction`` (stride with
    respect to the input image), whether its pre-activation output (``preact``) exists, and the
    qualified name of the BatchNorm before the stage's last ReLU (``bn_before_relu``), or None
    where the network cannot name one."""

    channels: int
    reduction: int
    preact: bool = False
    bn_before_relu: str | None = None


@dataclass(frozen=True)
class FeatureInfo:
    """Everything a method may know about a network before running it: its ``stages`` (any
    number), the ``stem`` (None where there is none), the length of the pooled feature
    (``pool``) and the number of classes (``logits``). Connectors are sized from this metadata,
    never from a dummy forward pass."""

    stages: tuple[StageInfo, ...]
    pool: int
    logits: int
    stem: StageInfo | None = None
    #: channels of the map whose global average pool is ``pool`` (and, through the classifier,
    #: the logits), for methods that pool it otherwise (SDD) or read class activation maps
    #: from it (CAT-KD); None where the network's pooled feature is not such an average
    pre_pool: int | None = None


@dataclass
class Features:
    """The features of one forward pass, as a method sees them.

    ``stages`` and ``stages_pre`` hold one entry per stage of the network (None where a feature
    was not requested or does not exist), so methods index them from the end: ``stages[-1]`` is
    the last stage's output."""

    logits: Tensor
    pool: Tensor | None = None
    stages: list[Tensor | None] = field(default_factory=list)
    stages_pre: list[Tensor | None] | None = None
    stem: Tensor | None = None
    pre_pool: Tensor | None = None

    @classmethod
    def from_raw(cls, raw: RawFeatures) -> "Features":
        return cls(logits=raw["logits"], pool=raw.get("pool"), stages=list(raw.get("stages", [])),
                   stages_pre=None if raw.get("stages_pre") is None else list(raw["stages_pre"]),
                   stem=raw.get("stem"), pre_pool=raw.get("pre_pool"))

    def map(self, fn: Callable[[Tensor], Tensor]) -> "Features":
        """A copy with ``fn`` applied to every tensor (e.g. ``.detach()``)."""
        def each(items: list[Tensor | None] | None) -> list[Tensor | None] | None:
            return None if items is None else [None if t is None else fn(t) for t in items]

        def one(item: Tensor | None) -> Tensor | None:
            return None if item is None else fn(item)

        return Features(logits=fn(self.logits), pool=one(self.pool),
                        stages=each(self.stages) or [], stages_pre=each(self.stages_pre),
                        stem=one(self.stem), pre_pool=one(self.pre_pool))

    def maps(self, positions: tuple[int, ...], preact: bool = False) -> list[Tensor]:
        """The stage maps at ``positions`` (negative, from the end), post- or pre-activation."""
        source = self.stages_pre if preact else self.stages
        assert source is not None, "pre-activation outputs were not requested"
        found = [source[p] for p in positions]
        assert all(t is not None for t in found), "a stage that was not requested"
        return found  # type: ignore[return-value]


@dataclass(frozen=True)
class FeatureRequest:
    """What a method asks of one network (the logits always come with it).

    ``stages``: positions from the end (``(-3, -2, -1)`` is "the last three stages") or
    ``"all"`` (as many as both networks have, aligned from the end); ``preact``: their
    pre-activation outputs instead of the post-activation ones; ``stem``, ``pool``: the stem's
    output and the pooled feature; ``bn_before_relu``: the network must name the BatchNorm
    before each requested stage's last ReLU; ``pre_pool``: the map the network globally pools
    (with its classifier, see :meth:`FeatureNet.classifier_layer`)."""

    stages: tuple[int, ...] | Literal["all"] = ()
    preact: bool = False
    stem: bool = False
    pool: bool = False
    bn_before_relu: bool = False
    pre_pool: bool = False

    @classmethod
    def last(cls, k: int, **kwargs: Any) -> "FeatureRequest":
        """The last ``k`` stages (in order)."""
        return cls(stages=tuple(range(-k, 0)), **kwargs)

    def resolve(self, *infos: FeatureInfo | None) -> "FeatureRequest":
        """``"all"`` replaced by the positions every network in ``infos`` has."""
        if self.stages != "all":
            return self
        depth = min(len(info.stages) for info in infos if info is not None)
        return replace(self, stages=tuple(range(-depth, 0)))

    @property
    def positions(self) -> tuple[int, ...]:
        assert self.stages != "all", "resolve the request first"
        return self.stages  # type: ignore[return-value]


def missing_features(request: FeatureRequest, info: FeatureInfo) -> list[str]:
    """What ``info`` lacks to serve the resolved ``request`` ([] when it serves it)."""
    count = len(info.stages)
    missing = []
    if request.positions and -min(request.positions) > count:
        missing.append(f"{-min(request.positions)} stages (it has {count})")
    served = [info.stages[p] for p in request.positions if -p <= count]
    if request.preact and not all(s.preact for s in served):
        missing.append("pre-activation stage outputs")
    if request.bn_before_relu and not all(s.bn_before_relu for s in served):
        missing.append("a named BatchNorm before each stage's last ReLU")
    if request.stem and info.stem is None:
        missing.append("a stem feature")
    if request.pre_pool and info.pre_pool is None:
        missing.append("the map that its global pooling averages")
    return missing


def check_request(method: str, role: str, model_name: str, request: FeatureRequest,
                  info: FeatureInfo) -> None:
    """One clear line when ``info`` cannot serve ``request``."""
    missing = missing_features(request, info)
    if missing:
        raise ConfigError(f"method {method} needs {' and '.join(missing)} of the {role}, which "
                          f"{model_name} does not provide; choose another {role} or method")


def select(raw: RawFeatures, request: FeatureRequest) -> Features:
    """Only the requested features of a forward pass (the others None)."""
    count = len(raw["stages"])
    wanted = {p % count for p in request.positions}
    source = raw.get("stages_pre") if request.preact else raw["stages"]
    chosen = [t if i in wanted else None for i, t in enumerate(source)] if source else []
    return Features(
        logits=raw["logits"],
        pool=raw["pool"] if request.pool else None,
        stages=[] if request.preact else chosen,
        stages_pre=chosen if request.preact else None,
        stem=raw.get("stem") if request.stem else None,
        pre_pool=raw.get("pre_pool") if request.pre_pool else None,
    )


class FeatureNet(nn.Module):
    """Base class of every kdzoo network.

    Subclasses set ``feature_info`` and implement ``forward_features(x)``, returning the
    :data:`RawFeatures` dict of one forward pass: ``stages`` (one map per stage, in order),
    ``stages_pre`` (pre-activation outputs, when the stages have them), ``stem`` (when there is
    one), ``pre_pool`` (the map averaged into ``pool``, where there is one), ``pool`` and
    ``logits``; ``classifier_module`` names the module that maps ``pool`` to the logits.
    ``features(x)`` wraps it in :class:`Features`; ``forward(x)`` returns the logits, so a kdzoo
    network is a drop-in ``nn.Module`` classifier. The attributes
    ``model_name``, ``num_classes`` and ``in_chans`` are set by :func:`kdzoo.create_model` and
    travel with exported checkpoints.
    """

    feature_info: FeatureInfo
    model_name: str = ""
    num_classes: int = 0
    in_chans: int = 3
    classifier_module: str = "fc"

    def classifier_layer(self) -> nn.Module:
        """The module that maps the pooled feature to the logits (SimKD reuses the teacher's;
        SDD and CAT-KD apply it to other pooled maps)."""
        return self.get_submodule(self.classifier_module)

    def forward_features(self, x: Tensor) -> RawFeatures:
        raise NotImplementedError

    def features(self, x: Tensor) -> Features:
        return Features.from_raw(self.forward_features(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)["logits"]


def feature_shapes(model: FeatureNet, image_size: int) -> dict[str, Any]:
    """Per-sample shapes for square inputs of ``image_size``, from the metadata alone:
    ``{"stages": [(C, H, W), ...], "stem": (C, H, W) or None, "pool": (C,), "logits": (K,)}``."""
    def shape(stage: StageInfo) -> tuple[int, int, int]:
        side = -(-image_size // stage.reduction)  # ceil: a stride-2 conv with padding
        return (stage.channels, side, side)

    info = model.feature_info
    return {"stages": [shape(s) for s in info.stages],
            "stem": None if info.stem is None else shape(info.stem),
            "pool": (info.pool,), "logits": (info.logits,)}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["FeatureInfo", "FeatureNet", "FeatureRequest", "Features", "RawFeatures",
           "StageInfo", "check_request", "count_parameters", "feature_shapes",
           "missing_features", "select"]



def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients: a frozen teacher's weights and BatchNorm statistics never
    change."""
    model.eval()
    model.requires_grad_(False)
    return model
