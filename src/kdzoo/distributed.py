"""Distributed training on PyTorch's own engine: DistributedDataParallel launched by torchrun.

``torchrun --nproc_per_node N -m kdzoo train ...`` starts N processes and tells each its rank
through the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``);
:func:`setup` joins them into one process group (NCCL on CUDA GPUs, gloo on CPUs) and picks the
process's device (``cuda:LOCAL_RANK``). Without torchrun, or with one process, nothing here does
anything: every collective below is the identity for a world of one.

The rules kdzoo keeps under DDP (see the README's "Scale" section):

* the configured batch size is the *global* batch: every rank draws the same (seed, epoch)
  permutation and augmentation, and takes a contiguous slice of each global batch
  (:func:`shard_sizes`), so batch k holds the same images at any world size;
* random draws that belong to samples (CRD's negatives, MLKD's strong views) are drawn for the
  global batch and sliced; state shared by samples (CRD's memory banks and normalisers) is
  updated from all ranks' samples (:func:`all_gather_rows`, :func:`all_reduce_sum`);
* only rank 0 writes files; the others wait at :func:`barrier` where they need them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    """This process's place in the run: its rank among ``world`` processes (one per device)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistContext()


def launched_world() -> int:
    """The number of processes torchrun started (1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 when not launched by torchrun)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def setup(device_name: str) -> tuple[DistContext, torch.device | None]:
    """Join torchrun's process group when launched with more than one process: the context and
    this process's device (None: resolve ``device_name`` as usual). A process group the caller
    already initialised is used as it is."""
    world = launched_world()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world <= 1 and not dist.is_initialized():
        if "LOCAL_RANK" in os.environ and device_name in ("auto", "cuda") and \
                torch.cuda.is_available():
            return SINGLE, torch.device("cuda", local)  # a 1-process torchrun on a GPU
        return SINGLE, None
    wants_cuda = device_name.startswith("cuda") or \
        (device_name == "auto" and torch.cuda.is_available())
    if wants_cuda and not torch.cuda.is_available():
        raise ConfigError("device cuda was asked for but no CUDA GPU is available: use "
                          "--device cpu (or auto)")
    device = torch.device("cuda", local) if wants_cuda else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
    context = DistContext(dist.get_rank(), dist.get_world_size(), local, dist.get_backend())
    return context, device


def teardown(context: DistContext, created: bool) -> None:
    """Leave the process group this module created (a caller's group stays)."""
    if context.active and created and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _active():
        dist.barrier()


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The element-wise sum over all ranks, in place (no gradient)."""
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(value: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``value`` on every rank (a picklable object)."""
    if not _active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_rows(rows: Tensor, sizes: tuple[int, ...]) -> Tensor:
    """Every rank's ``rows`` (rank r holds ``sizes[r]`` of them), concatenated in rank order:
    the rows of the global batch. No gradient flows back through it."""
    if not _active():
        return rows
    longest = max(sizes)
    padded = rows.new_zeros((longest, *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


class _SumOverRanks(torch.autograd.Function):
    """y = sum over ranks of x; dL/dx = sum over ranks of dL_r/dy (every rank's loss depends
    on y), so each rank gets the gradient of the sum of all ranks' losses."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:  # type: ignore[override]
        total = tensor.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        total = grad.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total


def all_reduce_with_grad(tensor: Tensor) -> Tensor:
    """The sum over ranks, differentiable: its backward sums the gradients over ranks too
    (what makes cross-rank BatchNorm statistics exact under DDP's gradient averaging)."""
    if not _active():
        return tensor
    return _SumOverRanks.apply(tensor)


def shard_sizes(count: int, world: int) -> tuple[int, ...]:
    """How ``count`` images of a global batch split over ``world`` ranks: contiguous slices,
    the first ``count % world`` one image larger (``torch.tensor_split``'s rule)."""
    base, extra = divmod(count, world)
    return tuple(base + (1 if r < extra else 0) for r in range(world))


def check_batch(batch_size: int, world: int) -> None:
    if world > 1 and batch_size % world:
        raise ConfigError(f"the batch size {batch_size} does not split over {world} processes: "
                          f"use a multiple of {world} (--batch-size is the global batch, "
                          f"{batch_size // world or 1} x {world} = "
                          f"{(batch_size // world or 1) * world} for example)")


# ---------------------------------------------------------------------- synchronised BatchNorm
class CrossRankBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch, on any device (torch's
    ``nn.SyncBatchNorm`` runs on GPUs only): the per-channel sum and then the sum of squared
    deviations are all-reduced, with gradients, so the normalisation, its gradient and the
    running statistics equal those of one process seeing the whole batch (up to float
    rounding). Outside distributed training, or in eval mode, it is plain BatchNorm."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and _active()):
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        count = input.new_tensor([input.numel() / input.shape[1]])
        totals = all_reduce_with_grad(torch.cat([input.sum(dims), count]))
        n = totals[-1].detach()
        mean = totals[:-1] / n
        centered = input - mean.view(shape)
        var = all_reduce_with_grad((centered * centered).sum(dims)) / n
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                assert self.running_var is not None and self.num_batches_tracked is not None
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else \
                    1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                unbiased = var.detach() * n / (n - 1).clamp(min=1)
                self.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)
        out = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of ``module`` synchronised across ranks: torch's ``nn.SyncBatchNorm`` on
    CUDA, :class:`CrossRankBatchNorm` elsewhere. Parameters and statistics are kept, and the
    state-dict keys do not change, so checkpoints and exports stay plain."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_cross_rank(module)


def _convert_cross_rank(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and \
            not isinstance(module, CrossRankBatchNorm):
        converted = CrossRankBatchNorm(module.num_features, module.eps, module.momentum,
                                       module.affine, module.track_running_stats)
        converted = converted.to(next(module.buffers(), torch.empty(0)).device)
        with torch.no_grad():
            if module.affine:
                converted.weight = module.weight
                converted.bias = module.bias
            if module.track_running_stats:
                converted.running_mean = module.running_mean
                converted.running_var = module.running_var
                converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        module.add_module(name, _convert_cross_rank(child))
    return module
