"""Fashion-MNIST (Xiao et al., 2017): 60,000/10,000 greyscale 28x28 images, 10 classes.

Read straight from the idx files (``train-images-idx3-ubyte.gz`` ...), gzipped or not. The
default folder is /usr/share/datasets/fashion-mnist (Debian's ``dataset-fashion-mnist``) when it
exists; ``--download`` fetches the files with torchvision into ``--data-dir``.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision import datasets as tv_datasets

from ..errors import DatasetError
from .base import AugmentSpec, ImageDataset, register_dataset

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_DIR = Path("./datasets")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MEAN, STD = (0.2860,), (0.3530,)  # the training set's pixel statistics


def _find(folder: Path, stem: str) -> Path | None:
    # torchvision's download puts the files in <root>/FashionMNIST/raw.
    for base in (folder, folder / "FashionMNIST" / "raw"):
        for candidate in (base / f"{stem}.gz", base / stem):
            if candidate.is_file():
                return candidate
    return None


def read_idx(path: Path) -> Tensor:
    """Read an idx file (LeCun's MNIST format) into a uint8 tensor."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
        magic, = struct.unpack(">I", raw[:4])
        ndim = magic & 0xFF
        if magic >> 8 != 0x08 or not 1 <= ndim <= 3:  # 0x08: unsigned bytes
            raise ValueError(f"bad magic number {magic:#x}")
        shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        if data.size != int(np.prod(shape)):
            raise ValueError(f"{data.size} bytes of data for shape {shape}")
    except (OSError, EOFError, ValueError, struct.error, gzip.BadGzipFile) as exc:
        raise DatasetError(
            f"cannot read {path}: the file is corrupt or truncated ({exc}); replace it "
            "(e.g. delete it and rerun with --download)"
        ) from None
    return torch.from_numpy(data.reshape(shape).copy())


@register_dataset(
    "fashion-mnist",
    "Fashion-MNIST: 60,000/10,000 greyscale images 28x28, 10 classes (idx files)",
    f"apt-get install dataset-fashion-mnist (files in {SYSTEM_DIR}) or --data-dir DIR --download",
)
def fashion_mnist(data_dir: str | Path | None = None, download: bool = False) -> ImageDataset:
    if data_dir is None:
        folder = SYSTEM_DIR if SYSTEM_DIR.is_dir() else DEFAULT_DIR
    else:
        folder = Path(data_dir).expanduser()
    paths = {key: _find(folder, stem) for key, stem in FILES.items()}
    missing = [FILES[k] for k, p in paths.items() if p is None]
    if missing and download:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tv_datasets.FashionMNIST(str(folder), train=True, download=True)
        except Exception as exc:  # noqa: BLE001 - network errors vary widely
            raise DatasetError(
                f"could not download fashion-mnist into {folder} ({str(exc)[:120]}); "
                "check the network or run: apt-get install -y dataset-fashion-mnist"
            ) from None
        paths = {key: _find(folder, stem) for key, stem in FILES.items()}
        missing = [FILES[k] for k, p in paths.items() if p is None]
    if missing:
        raise DatasetError(
            f"fashion-mnist not found: {folder} lacks {', '.join(missing)}(.gz); run "
            "`apt-get install -y dataset-fashion-mnist`, or add --download "
            "(with --data-dir DIR) to fetch it"
        )
    tensors = {key: read_idx(path) for key, path in paths.items()}
    return ImageDataset(
        name="fashion-mnist",
        train_images=tensors["train_images"].unsqueeze(1),
        train_labels=tensors["train_labels"],
        test_images=tensors["test_images"].unsqueeze(1),
        test_labels=tensors["test_labels"],
        num_classes=10,
        mean=MEAN,
        std=STD,
        # Clothes keep their meaning when mirrored; small shifts only (28x28 images).
        augment=AugmentSpec(pad=2, flip=True),
        source=str(folder),
    )
