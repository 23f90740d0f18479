"""In-memory image datasets and the dataset registry.

Every dataset is loaded once into uint8 tensors of shape (N, C, H, W): 50,000 CIFAR images take
150 MB, small enough to keep whole on the training device, where batches are cut, augmented and
normalised with tensor ops (see :mod:`kdzoo.data.augment`) instead of image by image through PIL.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from ..errors import ConfigError
from ..registry import Registry


@dataclass(frozen=True)
class AugmentSpec:
    """Training augmentation: pad by ``pad`` (``padding_mode``: torchvision's names, "reflect" as
    the reference zoo's ``Pad(4, padding_mode='reflect')`` or "constant" zeros as RepDistiller's
    and mdistiller's ``RandomCrop(32, padding=4)``) then random crop back to the original size
    (a random translation of up to ``pad`` pixels), and a random horizontal flip when ``flip``."""

    pad: int = 0
    flip: bool = False
    padding_mode: str = "reflect"


@dataclass
class ImageDataset:
    """A train/test split held as uint8 tensors, with its normalisation and augmentation."""

    name: str
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: AugmentSpec
    source: str = ""  # where the data came from (a folder, "embedded", "generated")
    #: a held-out validation split carved out of the training data (see kdzoo.data.split)
    val_images: Tensor | None = None
    val_labels: Tensor | None = None

    def __post_init__(self) -> None:
        splits = [("train", self.train_images, self.train_labels),
                  ("test", self.test_images, self.test_labels)]
        if self.val_images is not None and self.val_labels is not None:
            splits.append(("val", self.val_images, self.val_labels))
            self.val_labels = self.val_labels.long()
        for split, images, labels in splits:
            if images.dtype != torch.uint8 or images.dim() != 4:
                raise ValueError(f"{self.name} {split} images must be uint8 (N, C, H, W)")
            if labels.shape != (images.shape[0],):
                raise ValueError(f"{self.name} {split}: {len(labels)} labels for "
                                 f"{images.shape[0]} images")
        self.train_labels = self.train_labels.long()
        self.test_labels = self.test_labels.long()

    @property
    def in_chans(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_images.shape[2])

    def to(self, device: torch.device | str) -> "ImageDataset":
        """The same dataset with its tensors on ``device``."""
        moved = {k: getattr(self, k).to(device) for k in
                 ("train_images", "train_labels", "test_images", "test_labels", "val_images",
                  "val_labels") if getattr(self, k) is not None}
        return ImageDataset(**{**self.__dict__, **moved})


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    factory: Callable[..., ImageDataset]
    description: str
    how_to_get: str


DATASETS: Registry[DatasetEntry] = Registry("dataset", "kdzoo list datasets")


def register_dataset(name: str, description: str, how_to_get: str = "") -> Callable:
    """Decorator for ``factory(data_dir=None, download=False, **options) -> ImageDataset``."""

    def decorator(factory: Callable[..., ImageDataset]) -> Callable[..., ImageDataset]:
        DATASETS.register(name)(DatasetEntry(name, factory, description, how_to_get))
        return factory

    return decorator


def list_datasets() -> list[str]:
    return DATASETS.names()


def dataset_options(name: str) -> dict[str, Any]:
    """The dataset-specific options of ``name`` with their defaults."""
    params = inspect.signature(DATASETS.get(name).factory).parameters
    return {k: p.default for k, p in params.items() if k not in ("data_dir", "download")}


def load_dataset(name: str, data_dir: str | Path | None = None, download: bool = False,
                 **options: Any) -> ImageDataset:
    """Load a registered dataset; unknown options are refused with the list of known ones."""
    entry = DATASETS.get(name)
    known = dataset_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        listed = ", ".join(known) if known else "none"
        raise ConfigError(f"dataset '{name}' has no option {', '.join(unknown)} "
                          f"(its options: {listed})")
    return entry.factory(data_dir=data_dir, download=download, **options)
