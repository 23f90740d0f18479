"""Turn a :class:`~kdzoo.config.TrainConfig` into the pieces of a run, checking every user input
on the way (names, numbers, checkpoints, feature points) before anything is written."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..config import TrainConfig
from ..data import BatchLoader, ImageDataset, load_dataset
from ..data.base import DATASETS
from ..errors import ConfigError
from ..methods import METHODS, Method, MethodContext, Stage, create_method, resolve_method_params
from ..models import MODELS, FeatureNet, create_model, load_weights
from ..seeding import seeded
from .cache import TeacherCache
from .schedule import LRSchedule, build_schedule
from .teacher import TeacherRunner

log = logging.getLogger("kdzoo")


@dataclass
class Components:
    config: TrainConfig
    device: torch.device
    data: ImageDataset
    loader: BatchLoader
    student: FeatureNet
    teacher: FeatureNet | None
    method: Method
    stages: list[Stage]
    schedule: LRSchedule
    teacher_runner: TeacherRunner | None = None  # the frozen teacher's fast inference path
    teacher_cache: TeacherCache | None = None    # its logits for every augmented view


def check_amp(config: TrainConfig, device: torch.device) -> None:
    if config.amp == "fp16" and device.type != "cuda":
        raise ConfigError("--amp fp16 needs a CUDA GPU (float16 training needs loss scaling "
                          "on a GPU); use --amp bf16 or no --amp")
    if config.amp == "bf16" and device.type == "cpu" and not \
            torch.ops.mkldnn._is_mkldnn_bf16_supported():
        log.warning("warning: this CPU has no native bfloat16 support, so --amp bf16 will be "
                    "much slower than float32 here (measured 14-30x on AVX2 CPUs)")


#: Images per inference forward on a CPU: small enough for a layer's activations to stay in
#: the cache (measured: 32 is fastest for CIFAR ResNets on a 2-core machine).
CPU_INFERENCE_CHUNK = 32


def inference_chunk(config: TrainConfig, device: torch.device) -> int | None:
    """Images per teacher/evaluation forward (None: the whole batch)."""
    if config.inference_chunk is not None:
        return config.inference_chunk
    return CPU_INFERENCE_CHUNK if device.type == "cpu" else None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device '{name}': use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda was asked for but no CUDA GPU is available: use "
                          "--device cpu (or auto)")
    return device


def validate_config(config: TrainConfig) -> None:
    """Checks that need no data or files: numbers in range, names that exist."""
    optim = config.optim
    for key, value in (("epochs", optim.epochs), ("batch_size", optim.batch_size)):
        if value < 1:
            raise ConfigError(f"optim.{key} must be a positive integer, got {value}")
    if not optim.lr > 0:
        raise ConfigError(f"optim.lr (the learning rate) must be positive, got {optim.lr}")
    for key in ("momentum", "weight_decay"):
        if getattr(optim, key) < 0:
            raise ConfigError(f"optim.{key} must not be negative, got {getattr(optim, key)}")
    if config.inference_chunk is not None and config.inference_chunk < 1:
        raise ConfigError(f"inference_chunk must be positive, got {config.inference_chunk}")
    if config.eval_batch_size is not None and config.eval_batch_size < 1:
        raise ConfigError(f"eval_batch_size must be positive, got {config.eval_batch_size}")
    if config.nonfinite not in ("stop", "skip"):
        raise ConfigError(f"nonfinite must be 'stop' or 'skip', got '{config.nonfinite}'")
    if config.amp not in (None, "bf16", "fp16"):
        raise ConfigError(f"amp must be bf16 or fp16 (or unset), got '{config.amp}'")
    if config.log_interval < 1:
        raise ConfigError(f"log_interval must be positive, got {config.log_interval}")
    method_cls = METHODS.get(config.method.name)
    resolve_method_params(config.method.name, config.method.params)
    MODELS.get(config.student.name)
    DATASETS.get(config.data.name)
    if method_cls.needs_teacher:
        if config.teacher.name is None:
            raise ConfigError(f"method {config.method.name} needs a teacher: pass --teacher NAME "
                              "--teacher-checkpoint FILE")
        MODELS.get(config.teacher.name)
        peer_from_scratch = method_cls.trains_teacher  # DML's peer may start untrained
        if config.teacher.checkpoint is None and not (config.teacher.untrained or
                                                      peer_from_scratch):
            raise ConfigError(
                f"method {config.method.name} needs a trained teacher: pass --teacher-checkpoint "
                f"FILE (train one with `kdzoo train --method baseline --student "
                f"{config.teacher.name} ...`), or --untrained-teacher for smoke tests"
            )
    build_schedule(optim)


def build_student(config: TrainConfig, data: ImageDataset) -> FeatureNet:
    """The student's initial weights depend only on (model, classes, channels, seed), so every
    method run with one seed starts from the same weights (the reference's ``--s_init``)."""
    name = config.student.name
    with seeded("student-init", name, data.num_classes, data.in_chans, config.seed):
        student = create_model(name, num_classes=data.num_classes, in_chans=data.in_chans)
    if config.student.init is not None:
        load_weights(student, config.student.init, trust=config.trust_checkpoint)
    return student


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode and no gradients: a frozen teacher's weights and BatchNorm statistics never
    change."""
    model.eval()
    model.requires_grad_(False)
    return model


def build_teacher(config: TrainConfig, data: ImageDataset,
                  method_cls: type[Method]) -> FeatureNet | None:
    if not method_cls.needs_teacher:
        return None
    name = config.teacher.name
    assert name is not None  # validate_config checked it
    # A peer trained alongside the student (DML) must not start from the student's weights
    # when both are the same model, so its seed stream differs from the student's.
    role = "peer-init" if method_cls.trains_teacher else "teacher-init"
    with seeded(role, name, data.num_classes, data.in_chans, config.seed):
        teacher = create_model(name, num_classes=data.num_classes, in_chans=data.in_chans,
                               checkpoint=config.teacher.checkpoint,
                               trust_checkpoint=config.trust_checkpoint)
    return teacher if method_cls.trains_teacher else freeze(teacher)


def check_feature_points(method_cls: type[Method], student: FeatureNet,
                         teacher: FeatureNet | None) -> None:
    pairs = [("student", student, method_cls.required_student_points())]
    if teacher is not None:
        pairs.append(("teacher", teacher, method_cls.required_teacher_points()))
    for role, model, points in pairs:
        missing = [p for p in points if p not in model.feature_info]
        if missing:
            raise ConfigError(
                f"method {method_cls.name} needs feature point(s) {', '.join(missing)} that the "
                f"{role} {model.model_name} does not provide (it has: "
                f"{', '.join(model.feature_info)}); choose another {role} or method"
            )


def build(config: TrainConfig) -> Components:
    """Everything a run needs, on its device; raises a one-line error for any bad input."""
    validate_config(config)
    device = resolve_device(config.device)
    check_amp(config, device)
    data = load_dataset(config.data.name, config.data.data_dir, config.data.download,
                        **config.data.options)
    method_cls = METHODS.get(config.method.name)
    student = build_student(config, data)
    teacher = build_teacher(config, data, method_cls)
    check_feature_points(method_cls, student, teacher)
    ctx = MethodContext(
        student_info=dict(student.feature_info),
        teacher_info=dict(teacher.feature_info) if teacher is not None else None,
        num_classes=data.num_classes,
        image_size=data.image_size,
        in_chans=data.in_chans,
        train_labels=data.train_labels,
        data_name=data.name,
        seed=config.seed,
    )
    with seeded("method-init", config.method.name, config.seed):
        method = create_method(config.method.name, ctx, **config.method.params)
    schedule = build_schedule(config.optim)
    stages = method.stages(Stage("main", config.optim.epochs, schedule))
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    student.to(device=device, memory_format=memory_format)
    if teacher is not None:
        teacher.to(device=device, memory_format=memory_format)
    method.to(device)
    chunk = inference_chunk(config, device)
    loader = BatchLoader(data, config.optim.batch_size, device, channels_last=config.channels_last,
                         eval_batch_size=config.eval_batch_size or chunk)
    cache = None
    if config.teacher_cache and teacher is not None:
        if not method_cls.can_use_teacher_cache():
            points = method_cls.required_teacher_points()
            reason = (f"needs teacher features besides the logits ({', '.join(points)})"
                      if points != ("logits",) else "runs the teacher itself (on other inputs "
                      "than the training views, or with gradients)")
            raise ConfigError(f"method {config.method.name} {reason}, so the teacher's outputs "
                              "cannot be cached: run without --teacher-cache")
        cache = TeacherCache.for_teacher(teacher, data, config.cache_dir)
    runner = None
    if teacher is not None and not method_cls.trains_teacher:
        runner = TeacherRunner(teacher, method_cls.required_teacher_points(),
                               fold_bn=config.fold_teacher_bn, compile=config.compile,
                               memory_format=memory_format, chunk=chunk)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = config.cudnn_benchmark
    return Components(config, device, data, loader, student, teacher, method, stages, schedule,
                      runner, cache)
