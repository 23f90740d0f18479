"""The teacher-output cache: the frozen teacher's logits for every augmented view of a dataset.

A frozen teacher's output depends only on the input, and a training input is fully described by
(image index, crop offset, flip). CIFAR's augmentation has 9 x 9 offsets x 2 flips = 162 views
per image, so the logits of every view can be computed once per teacher and dataset, stored on
disk in float16 (CIFAR-10: 50,000 x 162 x 10 x 2 bytes = 162 MB; CIFAR-100: 1.6 GB), and reused
by every run, method and seed that distils from that teacher: for methods that need only the
teacher's logits (st, logits, ...), the teacher forward disappears from the training step.

The cache is keyed by a hash of the teacher's weights, the training images, the augmentation and
the normalisation, so it can never serve outputs of another teacher or another view. (Keying by
sample index alone, as torchdistill once did, serves the logits of one random crop for all the
others.) It fills lazily during training (views not yet stored are computed and written) or
ahead of time with ``kdzoo cache-teacher``; values are written before their "filled" flags, so
a crash can lose work but never serve a view that was not computed.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..data.base import AugmentSpec, ImageDataset
from ..environment import default_cache_dir
from ..errors import ConfigError, KdzooError
from ..models.features import FeatureNet

CACHE_FORMAT = "kdzoo-teacher-cache/1"


@dataclass(frozen=True)
class ViewSpace:
    """The augmented views of one image: (2*pad+1)^2 crop offsets, times 2 if flips are used."""

    pad: int
    flip: bool

    @classmethod
    def of(cls, spec: AugmentSpec) -> "ViewSpace":
        return cls(spec.pad, spec.flip)

    @property
    def size(self) -> int:
        return (2 * self.pad + 1) ** 2 * (2 if self.flip else 1)

    def index(self, offsets: Tensor, flips: Tensor | None) -> Tensor:
        """View numbers of a batch's (row, col) crop offsets and flips."""
        side = 2 * self.pad + 1
        view = offsets[:, 0] * side + offsets[:, 1]
        if self.flip:
            assert flips is not None
            view = view * 2 + flips.long()
        return view

    def decode(self, view: Tensor) -> tuple[Tensor, Tensor | None]:
        """Offsets (V, 2) and flips (V,) of view numbers: the inverse of :meth:`index`."""
        flips = None
        if self.flip:
            flips, view = (view % 2).bool(), view // 2
        side = 2 * self.pad + 1
        return torch.stack([view // side, view % side], dim=1), flips


def _as_float16(logits: Tensor) -> np.ndarray:
    """Logits as float16 for storage; values beyond its range (65504) are refused, never
    stored as infinities."""
    values = logits.detach().float().cpu()
    largest = float(values.abs().max()) if values.numel() else 0.0
    if not largest <= float(np.finfo(np.float16).max):
        raise KdzooError(
            f"the teacher's logits reach {largest:.3g}, beyond what the float16 teacher cache "
            "can store; is the teacher trained (its BatchNorm statistics set)? Run without "
            "--teacher-cache"
        )
    return values.numpy().astype(np.float16)


def cache_key(teacher: FeatureNet, data: ImageDataset) -> str:
    """A hash of everything the cached logits depend on."""
    digest = hashlib.sha256()
    digest.update(CACHE_FORMAT.encode())
    described = [teacher.model_name, teacher.num_classes, teacher.in_chans, data.augment.pad,
                 data.augment.flip, list(data.mean), list(data.std)]
    if data.augment.padding_mode != "reflect":  # caches filled before padding modes keep keys
        described.append(data.augment.padding_mode)
    digest.update(json.dumps(described).encode())
    for name, value in sorted(teacher.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    for images in (data.train_images, data.test_images):
        digest.update(str(tuple(images.shape)).encode())
        digest.update(images.cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


class TeacherCache:
    """Memory-mapped float16 logits of shape (images, views, classes), plus the test split's
    logits, with per-entry "filled" flags."""

    def __init__(self, folder: Path, num_images: int, views: ViewSpace, num_classes: int,
                 num_test: int, writable: bool = True) -> None:
        self.folder = folder
        self.views = views
        self.writable = writable  # False: lookups only (DDP ranks other than 0)
        shapes = {"train": (num_images, views.size, num_classes), "test": (num_test, num_classes),
                  "train_filled": (num_images, views.size), "test_filled": (1,)}
        meta = {"format": CACHE_FORMAT, "shapes": {k: list(v) for k, v in shapes.items()}}
        try:
            if not (folder / "meta.json").is_file():
                _create(folder, shapes, meta)
            if json.loads((folder / "meta.json").read_text()) != meta:
                raise KdzooError(f"teacher cache {folder} has another layout; delete the folder")
            mode = "r+" if writable else "r"
            self.train = np.memmap(folder / "train.f16", np.float16, mode, shape=shapes["train"])
            self.test = np.memmap(folder / "test.f16", np.float16, mode, shape=shapes["test"])
            self.train_filled = np.memmap(folder / "train_filled.u8", np.uint8, mode,
                                          shape=shapes["train_filled"])
            self.test_filled = np.memmap(folder / "test_filled.u8", np.uint8, mode, shape=(1,))
        except (OSError, ValueError) as exc:
            raise KdzooError(f"cannot open teacher cache {folder} ({exc}); delete the folder "
                             "and rerun") from None

    @staticmethod
    def check_data(data: ImageDataset) -> None:
        """Refuse a dataset whose augmented views cannot be enumerated (a streaming folder)."""
        if getattr(data, "streaming", False):
            raise ConfigError(f"the teacher cache stores every augmented view of an image, and "
                              f"{data.name}'s random-resized crops cannot be enumerated: run "
                              "without --teacher-cache")

    @classmethod
    def for_teacher(cls, teacher: FeatureNet, data: ImageDataset,
                    root: str | Path | None = None, writable: bool = True) -> "TeacherCache":
        cls.check_data(data)
        folder = Path(root or default_cache_dir()) / "teacher" / cache_key(teacher, data)
        return cls(folder, len(data.train_labels), ViewSpace.of(data.augment),
                   teacher.num_classes, len(data.test_labels), writable)

    def filled_fraction(self) -> float:
        return float(self.train_filled.mean())

    def lookup(self, indices: Tensor, views: Tensor) -> tuple[Tensor, Tensor]:
        """Cached logits (B, K) as float32 and a (B,) bool mask of the entries that exist."""
        i, v = indices.cpu().numpy(), views.cpu().numpy()
        filled = torch.from_numpy(self.train_filled[i, v].astype(bool))
        return torch.from_numpy(self.train[i, v].astype(np.float32)), filled

    def store(self, indices: Tensor, views: Tensor, logits: Tensor) -> None:
        if not self.writable:
            return
        i, v = indices.cpu().numpy(), views.cpu().numpy()
        self.train[i, v] = _as_float16(logits)
        self.train_filled[i, v] = 1  # after the values: a flag never precedes its data

    def test_logits(self) -> Tensor | None:
        return torch.from_numpy(self.test.astype(np.float32)) if self.test_filled[0] else None

    def store_test_logits(self, logits: Tensor) -> None:
        if not self.writable:
            return
        self.test[:] = _as_float16(logits)
        self.test.flush()
        self.test_filled[0] = 1

    def flush(self) -> None:
        if not self.writable:
            return
        self.train.flush()  # the values reach the disk before the flags that vouch for them
        self.train_filled.flush()
        self.test_filled.flush()

    def logits_for(self, indices: Tensor, views: Tensor, images: Tensor,
                   compute: Callable[[Tensor], Tensor]) -> Tensor:
        """The batch's teacher logits: cached where filled; the rest computed (by ``compute``
        on those images only) and stored."""
        cached, filled = self.lookup(indices, views)
        cached = cached.to(images.device)
        if bool(filled.all()):
            return cached
        missing = (~filled).nonzero().flatten()
        fresh = compute(images[missing.to(images.device)])
        self.store(indices[missing.to(indices.device)], views[missing.to(views.device)], fresh)
        # The fresh values go through float16 too, so a run sees the same numbers whether a
        # view was cached before or computed now.
        cached[missing.to(images.device)] = fresh.to(torch.float16).float()
        return cached


def _create(folder: Path, shapes: dict[str, tuple[int, ...]], meta: dict) -> None:
    """Create the cache's empty files (sparse: zeros cost no disk until written) and meta.json
    in a temporary folder next to ``folder``, then rename it into place; if another process
    got there first, its folder is kept and ours discarded."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        dtypes = {"train": np.float16, "test": np.float16, "train_filled": np.uint8,
                  "test_filled": np.uint8}
        suffix = {"train": "f16", "test": "f16", "train_filled": "u8", "test_filled": "u8"}
        for name, shape in shapes.items():
            np.memmap(staging / f"{name}.{suffix[name]}", dtypes[name], "w+", shape=shape).flush()
        (staging / "meta.json").write_text(json.dumps(meta))
        try:
            os.rename(staging, folder)
        except OSError:
            if not (folder / "meta.json").is_file():  # not a lost race: a real error
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fill_cache(cache: TeacherCache, data: ImageDataset, runner: Callable[[Tensor], Tensor],
               batch_size: int = 128, device: torch.device | str = "cpu",
               channels_last: bool = True,
               progress: Callable[[int, int], None] | None = None) -> int:
    """Compute every view of every training image that the cache lacks (``runner`` maps a
    normalised batch to logits), and the test split's logits; returns the images computed.
    Interrupting it loses at most the batch in flight: a rerun skips what is filled."""
    from ..data.augment import Normalize, crop_flip

    normalize = Normalize(data.mean, data.std, device)
    images = data.train_images.to(device)
    count, pad = len(images), data.augment.pad
    computed, total = 0, cache.views.size
    for view in range(total):
        offsets, flips = cache.views.decode(torch.tensor([view]))
        for start in range(0, count, batch_size):
            end = min(start + batch_size, count)
            if cache.train_filled[start:end, view].all():
                continue
            index = torch.arange(start, end)
            batch_flips = flips.expand(end - start).to(device) if flips is not None else None
            raw = crop_flip(images[start:end], offsets.expand(end - start, 2).to(device),
                            batch_flips, pad, data.augment.padding_mode)
            x = normalize(raw)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            cache.store(index, torch.full_like(index, view), runner(x))
            computed += end - start
        cache.flush()
        if progress is not None:
            progress(view + 1, total)
    if cache.test_logits() is None:
        test = Normalize(data.mean, data.std, device)(data.test_images.to(device))
        if channels_last:
            test = test.contiguous(memory_format=torch.channels_last)
        cache.store_test_logits(torch.cat([runner(test[s:s + batch_size])
                                           for s in range(0, len(test), batch_size)]))
    return computed
