"""CIFAR-10 and CIFAR-100 through torchvision's readers.

torchvision's ``CIFAR10``/``CIFAR100`` check the official md5 sum of every batch file when
reading. kdzoo verifies the archive's md5 when downloading (torchvision does that) but reads
existing files with an existence check only, so CIFAR-format files written elsewhere (re-packed
copies, the test suite's small files) load too.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torchvision import datasets as tv_datasets

from ..errors import DatasetError
from .base import AugmentSpec, ImageDataset, register_dataset

# Normalisation constants of the reference zoo (github.com/AberHu/Knowledge-Distillation-Zoo,
# dataset.py / train_*.py).
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
DEFAULT_DIR = "./datasets"


def _without_md5(cls: type) -> type:
    """A subclass of a torchvision CIFAR class that checks files for existence, not md5."""
    return type(
        f"_{cls.__name__}Files",
        (cls,),
        {
            "train_list": [[name, None] for name, _ in cls.train_list],
            "test_list": [[name, None] for name, _ in cls.test_list],
            "meta": {**cls.meta, "md5": None},
        },
    )


_READERS = {
    "cifar10": _without_md5(tv_datasets.CIFAR10),
    "cifar100": _without_md5(tv_datasets.CIFAR100),
}


def _load_cifar(name: str, data_dir: str | Path | None, download: bool) -> ImageDataset:
    reader = _READERS[name]
    root = Path(data_dir if data_dir is not None else DEFAULT_DIR).expanduser()
    folder = root / reader.base_folder
    files = [n for n, _ in reader.train_list + reader.test_list] + [reader.meta["filename"]]
    missing = [n for n in files if not (folder / n).is_file()]
    if missing and not download:
        raise DatasetError(
            f"{name} not found: {folder} lacks {', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''}; add --download to fetch it into {root} "
            f"(or point --data-dir at the folder that holds {reader.base_folder})"
        )
    if missing:
        try:
            root.mkdir(parents=True, exist_ok=True)
            reader(str(root), train=True, download=True)
        except Exception as exc:  # noqa: BLE001 - network and archive errors vary widely
            raise DatasetError(
                f"could not download {name} into {root} ({str(exc)[:120]}); check the network, "
                f"or download {reader.url} by hand and unpack it in {root}"
            ) from None
    splits = []
    for train in (True, False):
        try:
            ds = reader(str(root), train=train, download=False)
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, OSError,
                RuntimeError) as exc:
            raise DatasetError(
                f"cannot read {name} in {folder}: a file is corrupt or truncated "
                f"({type(exc).__name__}: {str(exc)[:80]}); delete {folder} and rerun with "
                "--download"
            ) from None
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        splits += [images, torch.as_tensor(ds.targets, dtype=torch.long)]
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if name == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
    return ImageDataset(
        name=name,
        train_images=splits[0],
        train_labels=splits[1],
        test_images=splits[2],
        test_labels=splits[3],
        num_classes=10 if name == "cifar10" else 100,
        mean=mean,
        std=std,
        augment=AugmentSpec(pad=4, flip=True),
        source=str(folder),
    )


@register_dataset(
    "cifar10",
    "CIFAR-10: 50,000/10,000 colour images 32x32, 10 classes (torchvision reader)",
    "--data-dir DIR --download",
)
def cifar10(data_dir: str | Path | None = None, download: bool = False) -> ImageDataset:
    return _load_cifar("cifar10", data_dir, download)


@register_dataset(
    "cifar100",
    "CIFAR-100: 50,000/10,000 colour images 32x32, 100 classes (torchvision reader)",
    "--data-dir DIR --download",
)
def cifar100(data_dir: str | Path | None = None, download: bool = False) -> ImageDataset:
    return _load_cifar("cifar100", data_dir, download)


def write_cifar_folder(root: str | Path, name: str, train_images: torch.Tensor,
                       train_labels: torch.Tensor, test_images: torch.Tensor,
                       test_labels: torch.Tensor) -> Path:
    """Write uint8 (N, 3, 32, 32) images in the official CIFAR python format under ``root``
    (what the tests and ``kdzoo bench`` use in place of the real files); returns the folder."""
    reader = _READERS[name]
    folder = Path(root) / reader.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    label_key = "labels" if name == "cifar10" else "fine_labels"
    num_classes = 10 if name == "cifar10" else 100

    def dump(filename: str, images: torch.Tensor, labels: torch.Tensor) -> None:
        entry = {"data": images.flatten(1).numpy(),
                 label_key: [int(y) for y in labels], "filenames": [], "batch_label": filename}
        with open(folder / filename, "wb") as handle:
            pickle.dump(entry, handle, protocol=2)

    train_files = [n for n, _ in reader.train_list]
    for filename, chunk in zip(train_files, torch.tensor_split(torch.arange(len(train_images)),
                                                               len(train_files))):
        dump(filename, train_images[chunk], train_labels[chunk])
    dump(reader.test_list[0][0], test_images, test_labels)
    names = [f"class{i}" for i in range(num_classes)]
    with open(folder / reader.meta["filename"], "wb") as handle:
        pickle.dump({reader.meta["key"]: names}, handle, protocol=2)
    return folder
