"""Turn a :class:`~kdzoo.config.TrainConfig` into the pieces of a run, checking every user input
on the way (names, numbers, hyper-parameters, checkpoints, what the networks can give the
method) before anything is written."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch

from ..config import TeacherConfig, TrainConfig
from ..core import LRSchedule, Role, Stage, build_schedule
from ..data import BatchLoader, ImageDataset, load_dataset
from ..data.imagefolder import StreamingLoader
from ..data.split import carve_validation, subset_training
from ..distributed import SINGLE, DistContext, check_batch, convert_sync_batchnorm
from ..environment import resolve_device
from ..errors import ConfigError
from ..methods import METHODS, Method, MethodContext
from ..models import FeatureNet, create_model, load_weights
from ..models.features import check_request, freeze
from ..seeding import seeded
from ..teachers import checkpoint_file
from .cache import TeacherCache
from .shared import SharedParts, data_key, frozen_key
from .step import StepModule
from .teacher import TeacherRunner

log = logging.getLogger("kdzoo")

#: Training batches whose statistics an untrained teacher's BatchNorms are calibrated on.
CALIBRATION_BATCHES = 4


@dataclass
class Components:
    """Everything a run needs. ``networks`` holds every role's network by role name (the
    student, frozen teachers, trained peers); ``step`` is the module that computes a training
    step; ``teacher_runners`` are the frozen roles' fast inference paths."""

    config: TrainConfig
    device: torch.device
    data: ImageDataset
    loader: BatchLoader
    networks: dict[str, FeatureNet]
    method: Method
    step: StepModule
    stages: list[Stage]
    schedule: LRSchedule
    teacher_runners: dict[str, TeacherRunner]
    teacher_cache: TeacherCache | None = None  # the teacher's logits for every augmented view
    #: frozen roles without a checkpoint -> training batches their BatchNorms were calibrated on
    calibrated: dict[str, int] = dataclasses.field(default_factory=dict)
    #: this process's place under torchrun (one process: rank 0 of 1)
    dist: DistContext = SINGLE
    #: what the loop calls for a step: ``step``, wrapped in DistributedDataParallel under DDP
    train_step: torch.nn.Module | None = None

    def __post_init__(self) -> None:
        if self.train_step is None:
            self.train_step = self.step

    @property
    def student(self) -> FeatureNet:
        return self.networks["student"]

    @property
    def teacher(self) -> FeatureNet | None:
        """The frozen teacher (role "teacher"), if the method has one."""
        return self.networks.get("teacher")

    @property
    def teacher_runner(self) -> TeacherRunner | None:
        return self.teacher_runners.get("teacher")

    @property
    def roles(self) -> tuple[Role, ...]:
        return type(self.method).roles


def check_amp(config: TrainConfig, device: torch.device) -> None:
    if config.amp == "fp16" and device.type != "cuda":
        raise ConfigError("--amp fp16 needs a CUDA GPU (float16 training needs loss scaling "
                          "on a GPU); use --amp bf16 or no --amp")
    if config.amp == "bf16" and device.type == "cpu" and not \
            torch.ops.mkldnn._is_mkldnn_bf16_supported():
        log.warning("warning: this CPU has no native bfloat16 support, so --amp bf16 will be "
                    "much slower than float32 here (measured 14-30x on AVX2 CPUs)")


def run_dtype(config: TrainConfig) -> torch.dtype:
    """The floating-point type of the run's networks, method parts and batches."""
    return torch.float64 if config.precision == "float64" else torch.float32


#: Images per inference forward on a CPU: small enough for a layer's activations to stay in
#: the cache (measured: 32 is fastest for CIFAR ResNets on a 2-core machine).
CPU_INFERENCE_CHUNK = 32


def inference_chunk(config: TrainConfig, device: torch.device) -> int | None:
    """Images per teacher/evaluation forward (None: the whole batch)."""
    if config.inference_chunk is not None:
        return config.inference_chunk
    return CPU_INFERENCE_CHUNK if device.type == "cpu" else None


def role_config(config: TrainConfig, role: Role) -> TeacherConfig:
    """The config section that names ``role``'s model (frozen teachers and trained peers)."""
    return getattr(config, role.source)


def load_run_data(config: TrainConfig) -> ImageDataset:
    """The run's dataset: loaded, reduced to ``data.train_subset`` images if asked, and with a
    held-out validation split of ``data.val_split`` if asked (both stratified and seeded by the
    dataset alone)."""
    data = load_dataset(config.data.name, config.data.data_dir, config.data.download,
                        **dict(config.data.options))
    data = with_protocol(data, config)
    if config.data.train_subset is not None:
        data = subset_training(data, config.data.train_subset)
    if config.data.val_split:
        data = carve_validation(data, config.data.val_split)
    return data


def with_protocol(data: ImageDataset, config: TrainConfig) -> ImageDataset:
    """``data`` with the run's crop padding and normalisation constants (its own where the
    config gives none)."""
    section = config.data
    if section.mean is not None and section.std is not None and \
            len(section.mean) != data.in_chans:
        raise ConfigError(f"data.mean and data.std give {len(section.mean)} channels, but "
                          f"{data.name} has {data.in_chans}: give one value per channel")
    changes: dict[str, Any] = {}
    if section.mean is not None and section.std is not None:
        changes.update(mean=tuple(section.mean), std=tuple(section.std))
    augment = getattr(data, "augment", None)
    if augment is not None and augment.padding_mode != section.padding_mode:
        changes["augment"] = dataclasses.replace(augment, padding_mode=section.padding_mode)
    return dataclasses.replace(data, **changes) if changes else data


def build_network(config: TrainConfig, data: ImageDataset, role: Role) -> FeatureNet:
    """A role's network. Initial weights depend only on (role, model, classes, channels, seed),
    so every method run with one seed starts its student from the same weights (the
    reference's ``--s_init``) and a peer of the same architecture from other weights."""
    section = config.student if role.source == "student" else role_config(config, role)
    name = section.name
    if name is None:  # the spec's check_names refuses this; a hand-made config may lack it
        raise ConfigError(f"{role.name} has no model: pass --{role.source} NAME")
    checkpoint = None if role.source == "student" else \
        checkpoint_file(section.checkpoint, name, data.num_classes, data.in_chans)
    with seeded(f"{role.name}-init", name, data.num_classes, data.in_chans, config.seed):
        network = create_model(name, num_classes=data.num_classes, in_chans=data.in_chans,
                               checkpoint=checkpoint, trust_checkpoint=config.trust_checkpoint,
                               pretrained=section.pretrained, stage_nodes=section.stage_nodes)
    if role.source == "student" and config.student.init is not None:
        load_weights(network, config.student.init, trust=config.trust_checkpoint)
    return network


def frozen_network(config: TrainConfig, data: ImageDataset, loader: BatchLoader, role: Role,
                   device: torch.device, dtype: torch.dtype,
                   memory_format: torch.memory_format) -> tuple[FeatureNet, int]:
    """A frozen role's network on the device, its BatchNorms calibrated when it has no trained
    weights, frozen; and the number of calibration batches (0: it had trained weights)."""
    network = build_network(config, data, role).to(device=device, dtype=dtype,
                                                   memory_format=memory_format)
    section = role_config(config, role)
    used = 0
    if section.checkpoint is None and not section.pretrained:
        used = calibrate_batchnorm(network, loader, config.seed)
    freeze(network)
    return network, used


@torch.no_grad()
def calibrate_batchnorm(model: torch.nn.Module, loader: BatchLoader, seed: int,
                        batches: int = CALIBRATION_BATCHES) -> int:
    """Set every BatchNorm's running statistics to their average over ``batches`` training
    batches (train-mode forwards, no gradients). An untrained deep network's eval-mode outputs
    explode otherwise (a random resnet110 gives logits of ~1e8), so a smoke run with an
    untrained teacher would end at the NaN guard. The batches are epoch 0's, which training
    never uses. Returns the number of batches used."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the calibration batches
    model.train()
    used = 0
    for used, batch in enumerate(loader.train_batches(seed, 0), start=1):
        model(batch.images)
        if used == batches:
            break
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.eval()
    return used


def check_features(method_cls: type[Method], config: TrainConfig,
                   networks: dict[str, FeatureNet]) -> None:
    """One line for a network that cannot give the method what it asks (too few stages, no
    pre-activation outputs, no BatchNorm before a ReLU, no stem)."""
    infos = {name: net.feature_info for name, net in networks.items()}
    requests = method_cls.feature_requests(config.method.params, infos)
    for role in method_cls.roles:
        network = networks[role.name]
        check_request(config.method.name, role.name, network.model_name or role.name,
                      requests[role.name], network.feature_info)


def check_distributed(config: TrainConfig, dist: DistContext) -> None:
    """What DDP cannot run, refused in one line before anything is loaded."""
    if not dist.active:
        return
    check_batch(config.optim.batch_size, dist.world)
    if config.optim.dot_delta is not None:
        raise ConfigError("DOT (optim.dot_delta) takes two backward passes per step, which "
                          "DistributedDataParallel does not support: run it in one process")


def wrap_ddp(step: StepModule, device: torch.device, stages: list[Stage]) -> torch.nn.Module:
    """The step module in DistributedDataParallel: the trainable networks' and the method's
    parameters are all-reduced; the method's buffers (CRD's banks, kept equal on every rank by
    all-gathers, constants) are not broadcast. Multi-stage methods train part of the module at
    a time, so DDP looks for unused parameters there (an extra graph traversal per step); every
    single-stage method uses all its parameters in every step (checked for each registered
    method), so it does not."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    ignored = [f"method.{name}" for name, _ in step.method.named_buffers()]
    DDP._set_params_and_buffers_to_ignore_for_model(step, ignored)
    return DDP(step, device_ids=[device.index] if device.type == "cuda" else None,
               find_unused_parameters=len(stages) > 1)


def build(config: TrainConfig, device: torch.device | None = None,
          dist: DistContext = SINGLE, shared: SharedParts | None = None) -> Components:
    """Everything a run needs, on its device (``device`` overrides ``config.device``: torchrun's
    ``cuda:LOCAL_RANK``); raises a one-line error for any bad input. ``shared`` keeps the
    dataset and the frozen networks for other runs built in this process."""
    check_distributed(config, dist)
    device = device if device is not None else resolve_device(config.device)
    if config.precision == "float64" and device.type != "cpu":
        raise ConfigError("--precision float64 runs on the CPU only: use --device cpu")
    dtype = run_dtype(config)
    check_amp(config, device)
    shared = shared or SharedParts()
    data = shared.get("data", data_key(config), lambda: load_run_data(config))
    method_cls = METHODS.get(config.method.name)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    chunk = inference_chunk(config, device)
    streaming = getattr(data, "streaming", False)  # decoded per batch from image files
    loader_class = StreamingLoader if streaming else BatchLoader
    loader = loader_class(data, config.optim.batch_size, device,  # type: ignore[arg-type]
                          channels_last=config.channels_last,
                          eval_batch_size=config.eval_batch_size or chunk, dtype=dtype)
    networks: dict[str, FeatureNet] = {}
    calibrated: dict[str, int] = {}
    for role in method_cls.roles:
        if role.trainable:
            networks[role.name] = build_network(config, data, role).to(
                device=device, dtype=dtype, memory_format=memory_format)
            continue
        networks[role.name], used = shared.get(
            "frozen", frozen_key(config, role.source, device),
            lambda: frozen_network(config, data, loader, role, device, dtype, memory_format))
        if used:
            calibrated[role.name] = used
    check_features(method_cls, config, networks)
    infos = {name: net.feature_info for name, net in networks.items()}
    teacher = networks.get("teacher")
    ctx = MethodContext(
        infos=infos,
        num_classes=data.num_classes,
        image_size=data.image_size,
        in_chans=data.in_chans,
        train_labels=data.train_labels,
        data_name=data.name,
        seed=config.seed,
        networks=dict(networks),
    )
    with seeded("method-init", config.method.name, config.seed):
        method = method_cls(ctx, config.method.params)
    schedule = build_schedule(config.optim)
    stages = method.stages(Stage("main", config.optim.epochs, schedule))
    method.to(device=device, dtype=dtype)
    if config.sync_bn and dist.active:  # before the step module compiles its forwards
        for role in method_cls.trainable_roles():
            convert_sync_batchnorm(networks[role.name], device)
        convert_sync_batchnorm(method, device)
    step = StepModule(method, networks, compile=config.compile, seed=config.seed,
                      loss=config.loss)
    if streaming and method.views:
        raise ConfigError(f"method {config.method.name} trains on extra views ("
                          f"{', '.join(method.views)}) that need an in-memory dataset; "
                          f"{data.name} has its own augmentation: use the method's standard "
                          "protocol")
    cache = None
    if config.teacher_cache:
        TeacherCache.check_data(data)
    if config.teacher_cache and teacher is not None:
        if not method_cls.can_use_teacher_cache() or method.views:
            request = method.requests["teacher"]
            reason = ("needs teacher features besides the logits" if request != type(request)()
                      else "runs the teacher itself (on other inputs than the training views, "
                           "or with gradients)")
            raise ConfigError(f"method {config.method.name} {reason}, so the teacher's outputs "
                              "cannot be cached: run without --teacher-cache")
        cache = TeacherCache.for_teacher(teacher, data, config.cache_dir,
                                         writable=dist.is_main)
    runners = {role.name: TeacherRunner(
        networks[role.name], method.requests[role.name], fold_bn=config.fold_teacher_bn,
        compile=config.compile, memory_format=memory_format, chunk=chunk,
        module=None if config.compile else shared.fast_module(
            networks[role.name], config.fold_teacher_bn, memory_format))
               for role in method_cls.frozen_roles()}
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = config.cudnn_benchmark
    train_step = wrap_ddp(step, device, stages) if dist.active else step
    return Components(config, device, data, loader, networks, method, step, stages, schedule,
                      runners, cache, calibrated, dist, train_step)
