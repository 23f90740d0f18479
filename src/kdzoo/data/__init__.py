"""Datasets held as uint8 tensors (or, for imagefolder, decoded on the fly), batched
augmentation, reproducible batches."""
from . import cifar, fashion_mnist, imagefolder, small  # noqa: F401  (register the datasets)
from .augment import Normalize, crop_flip
from .base import (DATASETS, AugmentSpec, ImageDataset, dataset_options, list_datasets,
                   load_dataset, register_dataset)
from .loader import Batch, BatchLoader

__all__ = [
    "DATASETS",
    "AugmentSpec",
    "Batch",
    "BatchLoader",
    "ImageDataset",
    "Normalize",
    "crop_flip",
    "dataset_options",
    "list_datasets",
    "load_dataset",
    "register_dataset",
]
