"""SimKD: project the student's last feature map onto the teacher's and reuse the teacher's
classifier; the deployed student is student + projector + the teacher's classifier."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError, KdzooError
from ..models.checkpoint import KDZOO_FORMAT, read_checkpoint_file
from ..models.features import FeatureInfo, FeatureNet, FeatureRequest, Features, RawFeatures
from ._networks import classifier_layer
from .base import Method, MethodContext, MethodParams, Step
from .registry import register_method

#: the ``deployed`` value of a SimKD student's export metadata
DEPLOYED_KIND = "simkd"


class SimKDProjector(nn.Sequential):
    """SimKD's bottleneck projector (the reference's ``transfer``): 1x1 convolution to
    ``mid_channels`` (= teacher width // factor), BatchNorm, ReLU, 3x3 convolution (padding 1),
    BatchNorm, ReLU, 1x1 convolution to the teacher's width, BatchNorm, ReLU; convolutions without
    bias, PyTorch's default init. The indices of the layers are the reference's."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, mid_channels, kernel_size=1, padding=0, stride=1, bias=False),
            nn.BatchNorm2d(mid_channels), nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, mid_channels, kernel_size=3, padding=1, stride=1, bias=False),
            nn.BatchNorm2d(mid_channels), nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, out_channels, kernel_size=1, padding=0, stride=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def align_spatial(student_map: Tensor, teacher_size: tuple[int, int]) -> Tensor:
    """SimKD's spatial alignment of the student's map: adaptive-average-pooled to the teacher's
    size when it is higher (the reference compares heights), unchanged otherwise."""
    if student_map.shape[2] > teacher_size[0]:
        return F.adaptive_avg_pool2d(student_map, teacher_size)
    return student_map


def align_teacher(teacher_map: Tensor, student_size: tuple[int, int]) -> Tensor:
    """The other half of SimKD's alignment: the teacher's map pooled to the student's size when
    the student's is not higher (the identity for equal sizes)."""
    if student_size[0] > teacher_map.shape[2]:
        return teacher_map
    return F.adaptive_avg_pool2d(teacher_map, student_size)


def linear_head(classifier: nn.Module) -> nn.Linear:
    """The teacher's classifier as the linear layer it is in evaluation: the module itself, or
    the one linear layer of a ``Sequential`` whose other layers have no parameters (dropout: the
    identity for the frozen teacher, which runs in eval mode)."""
    if isinstance(classifier, nn.Linear):
        return classifier
    if isinstance(classifier, nn.Sequential):
        linears = [m for m in classifier if isinstance(m, nn.Linear)]
        others = [m for m in classifier if not isinstance(m, nn.Linear)]
        if len(linears) == 1 and all(isinstance(m, (nn.Dropout, nn.Identity, nn.Flatten))
                                     for m in others):
            return linears[0]
    raise ConfigError(f"method simkd reuses the teacher's classifier as a linear layer, and this "
                      f"teacher's is a {type(classifier).__name__}; choose another teacher")


def _refresh_size_after_load(module: SimKDStudent, _keys: Any) -> None:
    module._size = module._read_size()


class SimKDStudent(FeatureNet):
    """The deployed SimKD student: the student network, then on its last stage's output SimKD's
    spatial alignment (:func:`align_spatial` to ``teacher_size``, the teacher's map size seen in
    training), the projector, global average pooling and the teacher's classifier (a linear
    layer). Its ``pre_pool``, ``pool`` and ``logits`` are those of the projected feature;
    ``stages`` and ``stem`` are the student's.

    ``teacher_size`` is a buffer, so an export carries it; :func:`load_simkd_student` rebuilds
    the whole model from an export. ``model_name``, ``num_classes`` and ``in_chans`` are the
    student network's. In train/eval switches the teacher's classifier stays in eval mode."""

    classifier_module = "classifier"
    teacher_size: Tensor

    def __init__(self, backbone: FeatureNet, projector: SimKDProjector, classifier: nn.Linear,
                 teacher_size: Tensor) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        self.classifier = classifier
        self.register_buffer("teacher_size", teacher_size.detach().to(torch.long).clone())
        self._size = self._read_size()  # read once, not at every forward (a device sync)
        self.register_load_state_dict_post_hook(_refresh_size_after_load)
        info = backbone.feature_info
        width = classifier.in_features
        self.feature_info = FeatureInfo(stages=info.stages, pool=width,
                                        logits=classifier.out_features, stem=info.stem,
                                        pre_pool=width)
        self.model_name = backbone.model_name
        self.num_classes = backbone.num_classes
        self.in_chans = backbone.in_chans
        self.training = backbone.training  # the flag only: the parts keep their modes

    def _read_size(self) -> tuple[int, int]:
        height, width = (int(v) for v in self.teacher_size.tolist())
        return height, width

    @property
    def export_metadata(self) -> dict[str, Any]:
        """What an export could record besides the weights (see :func:`load_simkd_student`)."""
        return {"deployed": DEPLOYED_KIND}

    def train(self, mode: bool = True) -> SimKDStudent:
        super().train(mode)
        self.classifier.eval()  # the teacher's: frozen, always evaluated
        return self

    def forward_features(self, x: Tensor) -> RawFeatures:
        raw = self.backbone.forward_features(x)
        projected = self.projector(align_spatial(raw["stages"][-1], self._size))
        pool = F.adaptive_avg_pool2d(projected, 1).flatten(1)
        return {**raw, "pre_pool": projected, "pool": pool, "logits": self.classifier(pool)}


@dataclass(frozen=True)
class SimKDParams(MethodParams):
    factor: int = 2
    weight: float = 1.0
    ce_weight: float = 0.0

    def check(self, method: str) -> None:
        if self.factor < 1:
            raise ConfigError(f"method {method}: factor must be at least 1, got "
                              f"{self.factor}")
        if self.weight < 0 or self.ce_weight < 0:
            raise ConfigError(f"method {method}: weight and ce_weight must be 0 or more, got "
                              f"{self.weight} and {self.ce_weight}")


@register_method("simkd")
class SimKD(Method[SimKDParams]):
    """SimKD: "Knowledge Distillation with the Reused Teacher Classifier", Chen, Mei, Zhang, Wang,
    Feng & Chen, CVPR 2022. Reference: DefangChen/SimKD@2b389c3 (https://github.com/DefangChen/SimKD),
    ``models/util.py`` (``SimKD``), ``helper/loops.py`` (``train_distill``,
    ``validate_distill``), ``train_student.py --distill simkd`` and ``scripts/run_distill.sh``
    (``-c 0 -d 0 -b 1``, ``-f 2``).

    The student's last stage output (post-activation; the reference's ``feat_s[-2]``) and the
    map the teacher globally pools into its classifier (``pre_pool``; the reference's
    ``feat_t[-2]`` for its CIFAR ResNet and VGG teachers): if the student's map is higher
    than the teacher's it is adaptive-average-pooled to the teacher's size, otherwise the
    teacher's is pooled to the student's; the student's then goes through the projector
    (:class:`SimKDProjector`, bottleneck width teacher width // ``factor``), and
    loss = weight * MSE(projected, teacher map), with cross-entropy weight ``ce_weight`` and no
    KL term. Defaults as the reference's CIFAR script: ``factor`` 2, weight 1.0 (``-b``),
    ``ce_weight`` 0.0 (``-c 0``: the student's own classifier gets zero gradients, and weight
    decay, as there).

    The deployed student (``deployed("student", network)``, what kdzoo evaluates every epoch,
    exports and counts) is :class:`SimKDStudent`: the student, the projector and the teacher's
    classifier (frozen) on the pooled projected feature, as the reference's ``validate_distill``;
    its parameter count includes the projector and the classifier. The teacher's classifier is
    taken from the teacher's network when the method is built (``MethodContext.networks``), or
    else at the first training step (``Step.networks``), so the deployed student exists once a
    step has run. Where the reference runs the teacher at evaluation only to read its map's size,
    the deployed student uses the size seen in training (buffer ``teacher_size``, initialised from
    the metadata). Load an export with :func:`load_simkd_student`.

    Deliberate difference: for a teacher whose classifier pools a head's output rather than its
    last stage (WRN: the head's BatchNorm-ReLU; ShuffleV2, MobileNetV2: a 1x1 convolution), the
    RepDistiller-style ``feat_t[-2]`` is the last stage, which the reused classifier never sees;
    kdzoo regresses the map the classifier does pool (identical for the reference's teachers).
    Teachers that pool no such map (no ``pre_pool``) are refused, and the teacher's classifier
    must be a linear layer (:func:`linear_head`).
    """

    paper = ("Knowledge Distillation with the Reused Teacher Classifier, Chen, Mei, Zhang, Wang, "
             "Feng & Chen, CVPR 2022")
    url = "https://github.com/DefangChen/SimKD"
    needs = FeatureRequest.last(1)
    teacher_needs = FeatureRequest(pre_pool=True)

    teacher_size: Tensor

    def __init__(self, ctx: MethodContext, params: SimKDParams) -> None:
        super().__init__(ctx, params)
        teacher = ctx.infos["teacher"]
        assert teacher.pre_pool is not None
        width = teacher.pre_pool
        mid = width // self.params.factor
        if mid < 1:
            raise ConfigError(f"method simkd: factor {self.params.factor} leaves no bottleneck "
                              f"channel for a teacher of {width} channels; use a smaller factor")
        self.projector = SimKDProjector(ctx.infos["student"].stages[-1].channels, mid, width)
        side = -(-ctx.image_size // teacher.stages[-1].reduction)
        self.register_buffer("teacher_size", torch.tensor([side, side], dtype=torch.long))
        self._seen_size: tuple[int, int] | None = None
        # The teacher's classifier, kept out of the module tree: it is the teacher's (frozen,
        # not this method's state) and only joins the deployed student.
        self._teacher_head: tuple[nn.Linear, ...] = ()
        if "teacher" in ctx.networks:
            self._teacher_head = (linear_head(classifier_layer(ctx.networks["teacher"])),)

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        student, teacher = features["student"], features["teacher"]
        assert teacher.pre_pool is not None
        if not self._teacher_head:
            self._teacher_head = (linear_head(classifier_layer(step.networks["teacher"])),)
        target_size = (teacher.pre_pool.shape[2], teacher.pre_pool.shape[3])
        if target_size != self._seen_size:
            self.teacher_size.copy_(torch.tensor(target_size))
            self._seen_size = target_size
        (student_map,) = student.maps(self.requests["student"].positions)
        source = align_spatial(student_map, target_size)
        target = align_teacher(teacher.pre_pool, (source.shape[2], source.shape[3]))
        return {"simkd": self.params.weight * F.mse_loss(self.projector(source), target)}

    def deployed(self, role: str, network: nn.Module) -> nn.Module:
        if role != "student":
            return network
        if not self._teacher_head:
            raise KdzooError("method simkd: the deployed student reuses the teacher's "
                             "classifier, which the method takes at its first training step; "
                             "run at least one step first")
        assert isinstance(network, FeatureNet)
        return SimKDStudent(network, self.projector, self._teacher_head[0], self.teacher_size)


def load_simkd_student(path: str | Path, trust: bool = False) -> SimKDStudent:
    """A deployed SimKD student (:class:`SimKDStudent`) from the ``student.pt`` a simkd run
    exports: the student network is rebuilt from the export's ``model_name``, ``num_classes`` and
    ``in_chans``, the projector and the classifier from the weights' shapes, then every weight
    and buffer is loaded. The model is returned in train mode, as ``create_model`` returns its."""
    from ..models.registry import create_model

    obj = read_checkpoint_file(path, trust=trust)
    state = obj.get("state_dict") if isinstance(obj, dict) else None
    if not isinstance(obj, dict) or obj.get("kdzoo_format") != KDZOO_FORMAT or \
            not isinstance(state, dict) or "projector.0.weight" not in state:
        raise CheckpointError(f"checkpoint {path} is not the export of a simkd run's student "
                              "(no kdzoo export with projector weights): load other exports "
                              "with kdzoo.create_model")
    try:
        backbone = create_model(obj["model_name"], num_classes=int(obj["num_classes"]),
                                in_chans=int(obj["in_chans"]))
        last = max(int(key.split(".")[1]) for key in state
                   if key.startswith("projector.") and key.endswith(".weight")
                   and state[key].dim() == 4)
        first, final = state["projector.0.weight"], state[f"projector.{last}.weight"]
        projector = SimKDProjector(first.shape[1], first.shape[0], final.shape[0])
        weight = state["classifier.weight"]
        classifier = nn.Linear(weight.shape[1], weight.shape[0],
                               bias="classifier.bias" in state)
        model = SimKDStudent(backbone, projector, classifier, state["teacher_size"])
        model.load_state_dict(state)
    except (KeyError, RuntimeError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} does not hold a complete SimKD student "
                              f"({reason[:160]})") from None
    model.classifier.requires_grad_(False)
    return model


__all__ = ["SimKD", "SimKDProjector", "SimKDStudent", "load_simkd_student"]
