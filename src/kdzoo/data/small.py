"""Datasets that need no files: scikit-learn's digits (embedded) and generated images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import AugmentSpec, ImageDataset, register_dataset


def _stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    pixels = images.double().div(255).transpose(0, 1).reshape(images.shape[1], -1)
    return tuple(pixels.mean(1).tolist()), tuple(pixels.std(1).clamp_min(1e-3).tolist())


@register_dataset(
    "digits",
    "scikit-learn's handwritten digits: 1,797 greyscale 8x8 images, 10 classes; fixed "
    "stratified 1,347/450 train/test split",
    "embedded (ships with scikit-learn)",
)
def digits(data_dir: str | Path | None = None, download: bool = False) -> ImageDataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    # Pixel values are 0..16; scale to the full uint8 range.
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    x_train, x_test, y_train, y_test = train_test_split(
        images, bunch.target, test_size=0.25, stratify=bunch.target, random_state=0
    )
    train_images = torch.from_numpy(x_train)
    mean, std = _stats(train_images)
    return ImageDataset(
        name="digits",
        train_images=train_images,
        train_labels=torch.from_numpy(y_train),
        test_images=torch.from_numpy(x_test),
        test_labels=torch.from_numpy(y_test),
        num_classes=10,
        mean=mean,
        std=std,
        # A one-pixel shift keeps a digit a digit; a mirror would not (2, 3, 5, 7, 9).
        augment=AugmentSpec(pad=1, flip=False),
        source="embedded",
    )


@register_dataset(
    "synthetic",
    "generated class-dependent images (default 512/256 images, 3x32x32, 10 classes) "
    "for tests and benchmarks",
    "generated (options: train_size, test_size, image_size, channels, num_classes, seed)",
)
def synthetic(
    data_dir: str | Path | None = None,
    download: bool = False,
    train_size: int = 512,
    test_size: int = 256,
    image_size: int = 32,
    channels: int = 3,
    num_classes: int = 10,
    seed: int = 0,
) -> ImageDataset:
    """Each class is a smooth random colour pattern; samples are that pattern plus noise, so a
    network can learn the task (a loss that goes down means something) in a few steps."""
    for option, value in (("train_size", train_size), ("test_size", test_size),
                          ("image_size", image_size), ("channels", channels),
                          ("num_classes", num_classes)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"synthetic dataset option {option} must be a positive integer, "
                              f"got {value!r}")
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, channels, 4, 4, generator=generator)
    prototypes = F.interpolate(coarse, size=(image_size, image_size), mode="bilinear",
                               align_corners=False)

    def sample(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(count) % num_classes
        labels = labels[torch.randperm(count, generator=generator)]
        noise = torch.randn(count, channels, image_size, image_size, generator=generator)
        images = 40.0 + 175.0 * prototypes[labels] + 30.0 * noise
        return images.round().clamp(0, 255).to(torch.uint8), labels

    train_images, train_labels = sample(train_size)
    test_images, test_labels = sample(test_size)
    mean, std = _stats(train_images)
    return ImageDataset(
        name="synthetic",
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        num_classes=num_classes,
        mean=mean,
        std=std,
        augment=AugmentSpec(pad=min(4, image_size - 1), flip=True),
        source="generated",
    )
