"""``imagefolder``: ImageNet-style class folders too large to hold in memory, decoded on the fly.

A folder with ``train/<class>/*.jpg`` and ``val/<class>/*.jpg`` (the layout of ImageNet after
the usual preparation, and of torchvision's ``ImageFolder``): classes are the sorted
sub-folder names. Images are decoded in DataLoader worker processes with the standard
pipeline: a random-resized crop (scale 0.08-1, aspect ratio 3/4-4/3) and a horizontal flip for
training, a resize of the shorter side to ``image_size / 0.875`` and a center crop for testing
(torchvision's ImageNet recipe). Normalisation runs on the training device, as for in-memory
datasets.

Batches are still a function of (seed, epoch): the epoch's order comes from the same seeded
permutation as every kdzoo dataset, and each image's crop and flip from a generator seeded with
(seed, epoch, image index), so the number of workers, a resume, or the number of DDP processes
(each takes its slice of every global batch) never changes what a batch holds. The teacher
cache cannot serve these views (a random-resized crop has no finite list of views).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor

from ..errors import ConfigError, KdzooError
from ..seeding import generator
from .base import register_dataset
from .loader import Batch, LoaderBase, batch_bounds, shard_bounds

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass
class FolderDataset:
    """File lists and labels of a class-folder dataset (the images stay on disk)."""

    name: str
    root: Path
    classes: list[str]
    train_files: list[str]
    train_labels: Tensor
    test_files: list[str]
    test_labels: Tensor
    image_size: int
    workers: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    source: str = ""
    val_files: list[str] | None = None
    val_labels: Tensor | None = None
    streaming = True  # decoded per batch: no in-memory tensors, no teacher cache
    augment = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        return 3

    def to(self, device: torch.device | str) -> "FolderDataset":
        return self  # the files stay where they are; batches go to the device

    def subset(self, chosen: Tensor) -> "FolderDataset":
        """Only the training images at ``chosen``."""
        return replace(self, train_files=[self.train_files[i] for i in chosen.tolist()],
                       train_labels=self.train_labels[chosen])

    def carve(self, val: Tensor, train: Tensor) -> "FolderDataset":
        """The training images at ``val`` moved to a validation split (test transform)."""
        return replace(self, train_files=[self.train_files[i] for i in train.tolist()],
                       train_labels=self.train_labels[train],
                       val_files=[self.train_files[i] for i in val.tolist()],
                       val_labels=self.train_labels[val])


def _scan(folder: Path, classes: list[str]) -> tuple[list[str], Tensor]:
    files, labels = [], []
    for label, name in enumerate(classes):
        found = sorted(p for p in (folder / name).rglob("*")
                       if p.is_file() and p.suffix.lower() in EXTENSIONS)
        files += [str(p) for p in found]
        labels += [label] * len(found)
    return files, torch.tensor(labels, dtype=torch.long)


@register_dataset("imagefolder", "class folders (ImageNet layout: DIR/train/CLASS/*.jpg and "
                  "DIR/val/CLASS/*.jpg), decoded on the fly in DataLoader workers",
                  "--data-dir DIR with train/ and val/ class folders")
def imagefolder(data_dir: str | Path | None = None, download: bool = False,
                image_size: int = 224, workers: int = 4) -> FolderDataset:
    if download:
        raise ConfigError("imagefolder cannot be downloaded: point --data-dir at a folder with "
                          "train/ and val/ class folders")
    if data_dir is None:
        raise ConfigError("imagefolder needs --data-dir DIR (DIR/train/CLASS/*.jpg and "
                          "DIR/val/CLASS/*.jpg)")
    if image_size < 8 or workers < 0:
        raise ConfigError(f"imagefolder needs image_size >= 8 and workers >= 0, got "
                          f"{image_size} and {workers}")
    root = Path(data_dir)
    train_dir, val_dir = root / "train", root / "val"
    for folder in (train_dir, val_dir):
        if not folder.is_dir():
            raise KdzooError(f"{folder} is not a folder: imagefolder reads DIR/train/CLASS/* "
                             "and DIR/val/CLASS/* (check --data-dir)")
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if not classes:
        raise KdzooError(f"{train_dir} has no class folders: put each class's images in "
                         f"{train_dir}/CLASS/")
    missing = sorted(p.name for p in val_dir.iterdir() if p.is_dir() and p.name not in classes)
    if missing:
        raise KdzooError(f"{val_dir} has classes that {train_dir} lacks: {', '.join(missing)}")
    train_files, train_labels = _scan(train_dir, classes)
    test_files, test_labels = _scan(val_dir, classes)
    if not train_files or not test_files:
        raise KdzooError(f"no images under {train_dir if not train_files else val_dir} (looked "
                         f"for {', '.join(EXTENSIONS)})")
    return FolderDataset("imagefolder", root, classes, train_files, train_labels, test_files,
                         test_labels, image_size, workers, source=str(root))


# ------------------------------------------------------------------------------ decoding
def random_resized_box(height: int, width: int, gen: torch.Generator,
                       scale: tuple[float, float] = (0.08, 1.0),
                       ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random-resized crop, torchvision's ``RandomResizedCrop``
    algorithm (10 tries, then the central crop of the closest ratio), drawn from ``gen``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * float(torch.rand(1, generator=gen)))
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) *
                          float(torch.rand(1, generator=gen)))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class _Decoded(torch.utils.data.Dataset):
    """Image ``i`` of a file list as a uint8 (3, S, S) tensor, with its label and index."""

    def __init__(self, files: list[str], labels: Tensor, size: int, train: bool,
                 seed: int = 0, epoch: int = 0) -> None:
        self.files, self.labels, self.size, self.train = files, labels, size, train
        self.seed, self.epoch = seed, epoch

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        from PIL import Image
        from torchvision.transforms import functional as TF

        try:
            with Image.open(self.files[index]) as image:
                image = image.convert("RGB")
        except OSError as exc:
            raise KdzooError(f"cannot read image {self.files[index]} ({exc})") from None
        if self.train:
            gen = generator(self.seed, "data", self.epoch, index)
            top, left, h, w = random_resized_box(image.height, image.width, gen)
            image = TF.resized_crop(image, top, left, h, w, [self.size, self.size],
                                    antialias=True)
            if bool(torch.rand(1, generator=gen) < 0.5):
                image = TF.hflip(image)
        else:
            image = TF.center_crop(TF.resize(image, int(self.size / 0.875), antialias=True),
                                   [self.size, self.size])
        return TF.pil_to_tensor(image), int(self.labels[index]), index


def _collate(items: list[tuple[Tensor, int, int]]) -> tuple[Tensor, Tensor, Tensor]:
    images, labels, indices = zip(*items)
    return torch.stack(images), torch.tensor(labels), torch.tensor(indices)


class StreamingLoader(LoaderBase):
    """The batches of a :class:`FolderDataset`, decoded by ``data.workers`` worker processes:
    the same interface as :class:`~kdzoo.data.loader.BatchLoader`."""

    data: FolderDataset

    def _batches(self, dataset: _Decoded, index_lists: list[list[int]]
                 ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=index_lists, num_workers=self.data.workers,
            collate_fn=_collate, pin_memory=self.device.type == "cuda")
        for images, labels, indices in loader:
            yield (self._finish(images.to(self.device, non_blocking=True)),
                   labels.to(self.device), indices.to(self.device))

    def train_batches(self, seed: int, epoch: int, start_step: int = 0,
                      views: tuple[str, ...] = (), rank: int = 0,
                      world: int = 1) -> Iterator[Batch]:
        """The training batches of ``epoch`` from ``start_step`` on (this ``rank``'s slice of
        each global batch when ``world`` > 1); the order is the (seed, epoch) permutation."""

        if views:
            raise ConfigError(f"the extra views {', '.join(views)} need an in-memory dataset; "
                              "imagefolder has its own augmentation")
        count = len(self.data.train_labels)
        order = torch.randperm(count, generator=generator(seed, "data", epoch))
        plans = []
        for start, end in batch_bounds(count, self.batch_size, world)[start_step:]:
            lo, hi, sizes = shard_bounds(start, end, rank, world)
            plans.append((order[start:end], order[lo:hi], sizes))
        dataset = _Decoded(self.data.train_files, self.data.train_labels, self.data.image_size,
                           True, seed, epoch)
        for (whole, _, sizes), (images, labels, indices) in zip(
                plans, self._batches(dataset, [mine.tolist() for _, mine, _ in plans])):
            yield Batch(images, labels, indices, None, None, {},
                        whole.to(self.device) if sizes else None, sizes, rank if sizes else 0)

    def test_batches(self, split: str = "test") -> Iterator[Batch]:
        """The test (or validation) images in order, resized and center-cropped."""

        files, labels = (self.data.test_files, self.data.test_labels) if split == "test" else \
            (self.data.val_files, self.data.val_labels)
        assert files is not None and labels is not None, f"the dataset has no {split} split"
        dataset = _Decoded(files, labels, self.data.image_size, False)
        chunks = [list(range(s, min(s + self.eval_batch_size, len(files))))
                  for s in range(0, len(files), self.eval_batch_size)]
        for images, batch_labels, indices in self._batches(dataset, chunks):
            yield Batch(images, batch_labels, indices)
