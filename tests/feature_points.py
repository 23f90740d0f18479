"""Named feature points of three-stage networks (the CIFAR ResNets), for tests that compute
expected losses point by point: ``stem``, ``stage1`` .. ``stage3``, ``stage1_pre`` ..
``stage3_pre``, ``pool``, ``logits``; converted to and from :class:`kdzoo.models.Features`."""
from __future__ import annotations

from torch import Tensor

from kdzoo.models import Features

STAGES = 3


def points_of(features: Features) -> dict[str, Tensor]:
    """The named points of a three-stage network's features (those that are present)."""
    points: dict[str, Tensor] = {"logits": features.logits}
    for name, value in (("pool", features.pool), ("stem", features.stem)):
        if value is not None:
            points[name] = value
    for index, value in enumerate(features.stages, start=1):
        if value is not None:
            points[f"stage{index}"] = value
    for index, value in enumerate(features.stages_pre or [], start=1):
        if value is not None:
            points[f"stage{index}_pre"] = value
    return points


def features_of(points: dict[str, Tensor]) -> Features:
    """:class:`Features` of a three-stage network from named points."""
    stages = [points.get(f"stage{i}") for i in range(1, STAGES + 1)]
    pre = [points.get(f"stage{i}_pre") for i in range(1, STAGES + 1)]
    return Features(logits=points.get("logits"), pool=points.get("pool"), stages=stages,
                    stages_pre=pre if any(t is not None for t in pre) else None,
                    stem=points.get("stem"))


def point_features(model, images) -> dict[str, Tensor]:
    """Every named point of one forward pass of ``model``."""
    return points_of(model.features(images))


def requested_points(method_cls) -> tuple[str, ...]:
    """The named points a method asks of a three-stage student (stem, stages, pool)."""
    from kdzoo.models import FeatureInfo, StageInfo

    stage = StageInfo(8, 1, preact=True, bn_before_relu="bn")
    info = FeatureInfo(stages=(stage,) * STAGES, pool=8, logits=10, stem=stage)
    request = method_cls.needs.resolve(info)
    suffix = "_pre" if request.preact else ""
    points = ["stem"] if request.stem else []
    points += [f"stage{STAGES + p + 1}{suffix}" for p in request.positions]
    return tuple(points + (["pool"] if request.pool else []))
