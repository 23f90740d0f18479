"""Batches of an in-memory dataset, with a reproducible order.

The order and augmentation of epoch ``e`` come from a generator seeded with
``derive_seed(seed, "data", e)``: the same seed gives the same batches, and a run resumed at
any epoch (or step) continues with exactly the batches the uninterrupted run would have used.
Under DDP every rank draws the same plan and takes its contiguous slice of each global batch
(:func:`kdzoo.distributed.shard_sizes`), so global batch k is the same at any world size.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from ..distributed import shard_sizes
from ..seeding import generator
from .augment import Normalize, crop_flip
from .base import AugmentSpec, ImageDataset


@dataclass
class Batch:
    """One batch as the training loop and the methods see it.

    ``indices`` are positions in the split (CRD's memory bank needs them); ``offsets`` and
    ``flips`` record the augmentation of each image (None for test batches)."""

    images: Tensor
    labels: Tensor
    indices: Tensor
    offsets: Tensor | None = None
    flips: Tensor | None = None
    #: extra augmented views of the same images, by name (``"strong"``: MLKD's RandAugment view)
    views: dict[str, Tensor] = field(default_factory=dict)
    #: Under DDP: the indices of the whole global batch, how it splits over the ranks and this
    #: rank (None / () / 0 for a batch that is the whole batch).
    global_indices: Tensor | None = None
    shard_sizes: tuple[int, ...] = ()
    rank: int = 0

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def global_size(self) -> int:
        return sum(self.shard_sizes) if self.shard_sizes else len(self)

    @property
    def shard(self) -> tuple[int, int]:
        """This rank's (start, end) in the global batch."""
        if not self.shard_sizes:
            return 0, len(self)
        start = sum(self.shard_sizes[: self.rank])
        return start, start + self.shard_sizes[self.rank]

    @property
    def loss_scale(self) -> float:
        """What this rank's mean loss is multiplied by before backward so that DDP's average of
        the ranks' gradients is the gradient of the global batch's mean loss (1 unless the
        global batch splits unevenly, as a last batch may)."""
        if not self.shard_sizes:
            return 1.0
        return len(self) * len(self.shard_sizes) / self.global_size


@dataclass
class EpochPlan:
    """Everything random about one training epoch, drawn up front."""

    order: Tensor    # (N,) permutation of the training set
    offsets: Tensor  # (N, 2) crop corners, aligned with ``order``
    flips: Tensor | None


def batch_bounds(count: int, batch_size: int, world: int = 1) -> list[tuple[int, int]]:
    """Batch (start, end) pairs; a last batch too small to give every one of ``world`` ranks two
    images is merged into the one before, since BatchNorm cannot train on one sample."""
    bounds = [(s, min(s + batch_size, count)) for s in range(0, count, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < 2 * world:
        bounds[-2:] = [(bounds[-2][0], count)]
    return bounds


def shard_bounds(start: int, end: int, rank: int, world: int
                 ) -> tuple[int, int, tuple[int, ...]]:
    """This rank's (start, end) within the global batch [start, end), and how the batch splits
    over the ranks (``()`` for one process, whose slice is the whole batch)."""
    if world == 1:
        return start, end, ()
    sizes = shard_sizes(end - start, world)
    first = start + sum(sizes[:rank])
    return first, first + sizes[rank], sizes


def strong_view(images: Tensor, spec: AugmentSpec, gen: torch.Generator) -> Tensor:
    """MLKD's strong view of uint8 images: the dataset's own crop and flip, drawn anew, then
    RandAugment with 2 operations of magnitude 10 (:mod:`kdzoo.data.randaugment`)."""
    from .randaugment import rand_augment

    count = images.shape[0]
    offsets = torch.randint(0, 2 * spec.pad + 1, (count, 2), generator=gen).to(images.device)
    flips = (torch.rand(count, generator=gen) < 0.5).to(images.device) if spec.flip else None
    if spec.pad or flips is not None:
        images = crop_flip(images, offsets, flips, spec.pad, spec.padding_mode)
    return rand_augment(images, gen, num_ops=2, magnitude=10)


#: Extra views a method may ask for: name -> f(uint8 images, augmentation, generator) -> uint8
#: images; the generator is seeded from (seed, view, epoch, step), so a resumed run draws the
#: same views.
EXTRA_VIEWS: dict[str, Callable[[Tensor, AugmentSpec, torch.Generator], Tensor]] = {
    "strong": strong_view}


class LoaderBase:
    """What every loader shares: the batch sizes, the device, and the normalisation, float type
    and memory format of the batches it yields. ``data`` has ``train_labels``, ``mean`` and
    ``std``."""

    def __init__(self, data: Any, batch_size: int, device: torch.device | str = "cpu",
                 channels_last: bool = False, eval_batch_size: int | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        self.data = data
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.dtype = dtype
        self.normalize = Normalize(data.mean, data.std, device, dtype)

    @property
    def steps_per_epoch(self) -> int:
        return len(batch_bounds(len(self.data.train_labels), self.batch_size))

    def _finish(self, images: Tensor) -> Tensor:
        """uint8 images on the device -> normalised float images in the run's memory format."""
        images = self.normalize(images)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images


class BatchLoader(LoaderBase):
    """Cuts, augments and normalises batches of ``data`` on ``device``."""

    def __init__(self, data: ImageDataset, batch_size: int, device: torch.device | str = "cpu",
                 channels_last: bool = False, eval_batch_size: int | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__(data.to(device), batch_size, device, channels_last, eval_batch_size,
                         dtype)

    def epoch_plan(self, seed: int, epoch: int) -> EpochPlan:
        count, spec = len(self.data.train_labels), self.data.augment
        gen = generator(seed, "data", epoch)
        order = torch.randperm(count, generator=gen)
        offsets = torch.randint(0, 2 * spec.pad + 1, (count, 2), generator=gen)
        flips = torch.rand(count, generator=gen) < 0.5 if spec.flip else None
        return EpochPlan(order, offsets, flips)

    def train_batches(self, seed: int, epoch: int, start_step: int = 0,
                      views: tuple[str, ...] = (), rank: int = 0,
                      world: int = 1) -> Iterator[Batch]:
        """The augmented training batches of ``epoch`` (1-based), from ``start_step`` on, with
        the extra ``views`` a method asks for (see :data:`EXTRA_VIEWS`); with ``world`` > 1,
        this ``rank``'s slice of each global batch."""
        plan = self.epoch_plan(seed, epoch)
        pad = self.data.augment.pad
        bounds = batch_bounds(len(plan.order), self.batch_size, world)
        for step, (start, end) in enumerate(bounds[start_step:], start=start_step):
            whole = plan.order[start:end].to(self.device)
            lo, hi, sizes = shard_bounds(start, end, rank, world)
            index = plan.order[lo:hi].to(self.device)
            offsets = plan.offsets[lo:hi].to(self.device)
            flips = plan.flips[lo:hi].to(self.device) if plan.flips is not None else None
            raw = self.data.train_images[index]
            if pad or flips is not None:
                raw = crop_flip(raw, offsets, flips, pad, self.data.augment.padding_mode)
            # Extra views are drawn for the global batch and sliced: a rank's images get the
            # same views at any world size.
            extra = {name: self._finish(EXTRA_VIEWS[name](
                self.data.train_images[whole], self.data.augment,
                generator(seed, "view", name, epoch, step))[lo - start:hi - start])
                for name in views}
            yield Batch(self._finish(raw), self.data.train_labels[index], index, offsets, flips,
                        extra, whole if sizes else None, sizes, rank if sizes else 0)

    def test_batches(self, split: str = "test") -> Iterator[Batch]:
        """The test (or ``split="val"``: validation) images in order, unaugmented."""
        images, labels = (self.data.test_images, self.data.test_labels) if split == "test" \
            else (self.data.val_images, self.data.val_labels)
        assert images is not None and labels is not None, f"the dataset has no {split} split"
        for start, end in batch_bounds(len(labels), self.eval_batch_size):
            index = torch.arange(start, end, device=self.device)
            yield Batch(self._finish(images[start:end]), labels[start:end], index)
