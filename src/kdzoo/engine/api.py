"""``fit``: run one training or distillation from a config, writing its run folder."""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from .. import distributed
from ..config import TrainConfig
from ..models import FeatureNet
from .build import build
from .events import check_tensorboard
from .rundir import LOG, NullRecorder, RunDir
from .shared import SharedParts
from .state import check_resume_config
from .trainer import EpochHook, Trainer

log = logging.getLogger("kdzoo")


@dataclass
class RunResult:
    """What :func:`fit` returns: the summary (as in summary.json), the run folder, and the
    trained student (on the training device)."""

    summary: dict[str, Any]
    path: Path
    student: FeatureNet


def set_deterministic() -> None:
    """PyTorch's deterministic algorithms (errors on ops that have none), cuDNN without
    autotuning, and the cuBLAS workspace setting that deterministic CUDA matmuls need."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def default_out(config: TrainConfig, resume: bool = False) -> Path:
    """runs/<method>-<teacher>-<student>-<data>-s<seed>, with -2, -3 ... added if taken."""
    teacher = f"{config.teacher.name}-" if config.teacher.name else ""
    base = Path("runs") / f"{config.method.name}-{teacher}{config.student.name}-" \
                          f"{config.data.name}-s{config.seed}"
    if resume:
        return base
    path, index = base, 2
    while path.exists():
        path, index = base.with_name(f"{base.name}-{index}"), index + 1
    return path


def fit(config: TrainConfig, *, resume: bool = False, overwrite: bool = False,
        progress: bool | None = None, shared: SharedParts | None = None,
        on_epoch: EpochHook | None = None) -> RunResult:
    """Train ``config.student`` (distilled from ``config.teacher`` by ``config.method``) and
    write the run folder ``config.out``. Bad input raises :class:`~kdzoo.errors.KdzooError`
    before anything is written; ``resume`` continues the run in ``config.out`` from its last
    checkpoint; ``overwrite`` replaces the kdzoo files of an existing folder. ``config`` is the
    run spec of :func:`kdzoo.resolve_config`; ``shared`` keeps the dataset and frozen teachers
    for the next runs of this process (:class:`~kdzoo.engine.shared.SharedParts`); ``on_epoch``
    is called with each epoch's record once it is written (an exception it raises stops the
    run there, its checkpoint kept)."""
    with run_context(config):
        return _fit(config, resume, overwrite, progress, shared, on_epoch)


@contextlib.contextmanager
def run_context(config: TrainConfig) -> Iterator[None]:
    """Process-global switches set for one run and restored after it (deterministic
    algorithms, cuDNN flags, the cuBLAS workspace setting, inductor's freezing, torch's thread
    count), so runs in one process (tests, ``kdzoo zoo``, the Python API) never depend on the
    runs before them."""
    import torch._inductor.config as inductor_config

    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             os.environ.get("CUBLAS_WORKSPACE_CONFIG"), inductor_config.freezing,
             torch.get_num_threads())
    try:
        if config.deterministic:
            set_deterministic()
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        yield
    finally:
        deterministic, warn_only, cudnn_deterministic, cudnn_benchmark, cublas, freezing, \
            threads = saved
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.deterministic = cudnn_deterministic
        torch.backends.cudnn.benchmark = cudnn_benchmark
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas
        inductor_config.freezing = freezing


def _fit(config: TrainConfig, resume: bool, overwrite: bool, progress: bool | None,
         shared: SharedParts | None, on_epoch: EpochHook | None) -> RunResult:
    created = not distributed.dist.is_initialized()
    context, device = distributed.setup(config.device)
    try:
        return _fit_process(config, resume, overwrite, progress, context, device, shared,
                            on_epoch)
    finally:
        distributed.teardown(context, created)


def _fit_process(config: TrainConfig, resume: bool, overwrite: bool, progress: bool | None,
                 context: distributed.DistContext, device: torch.device | None,
                 shared: SharedParts | None = None,
                 on_epoch: EpochHook | None = None) -> RunResult:
    """One process's part of a run: the whole run, or one rank of a torchrun launch (every
    rank checks the input, so a bad one stops them all; rank 0 alone writes)."""
    out = Path(config.out) if config.out else default_out(config, resume)
    if context.active and not config.out and not resume:
        out = Path(distributed.broadcast_object(str(out)))  # one folder, chosen by rank 0
    RunDir.check(out, resume, overwrite)  # fail fast, before loading any data
    if resume:
        check_resume_config(out, config)
    if config.tensorboard:
        check_tensorboard()
    parts = build(config, device, context, shared)
    distributed.barrier()  # rank 0 checked the folder before it may change it
    if context.is_main:
        run = RunDir.prepare(out, resume, overwrite)
        run.tensorboard = config.tensorboard
    else:
        run = NullRecorder(out)
    distributed.barrier()  # the folder is ready before any rank reads a checkpoint from it
    handler = logging.FileHandler(run / LOG, encoding="utf-8") if context.is_main else None
    level = log.level
    if handler is not None:
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        if not log.isEnabledFor(logging.INFO):
            log.setLevel(logging.INFO)  # log.txt is complete whatever the caller's level
    else:
        log.setLevel(logging.WARNING)  # the other ranks say only what goes wrong
    try:
        log.info("run folder %s: %s %s -> %s on %s, seed %d", run.path, config.method.name,
                 config.teacher.name if parts.teacher is not None else "(no teacher)",
                 config.student.name, config.data.name, config.seed)
        if context.active:
            log.info("distributed: %d processes (%s), global batch %d = %d x %d per process%s",
                     context.world, context.backend, config.optim.batch_size, context.world,
                     config.optim.batch_size // context.world,
                     ", synchronised BatchNorm" if config.sync_bn else "")
        summary = Trainer(parts, run, progress, on_epoch).fit(resume=resume)
    finally:
        log.setLevel(level)
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
        run.close()
    return RunResult(summary, run.path, parts.student)
